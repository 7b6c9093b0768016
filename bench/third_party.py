"""Where the offline copies of upstream sources are: ../shared/third_party
beside the checkout (or beside the main checkout, for a git worktree), or
$SLUICE_THIRD_PARTY. The build scripts clone upstream when a file is not
there (bench/pktgen/build.sh, bench/peers/katran/build.sh)."""
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tarball(name):
    """The path of third_party/<name> when it exists, else None."""
    dirs = [os.environ["SLUICE_THIRD_PARTY"]] if os.environ.get("SLUICE_THIRD_PARTY") else []
    roots = [ROOT]
    try:
        common = subprocess.run(["git", "-C", ROOT, "rev-parse", "--path-format=absolute", "--git-common-dir"],
                                capture_output=True, text=True, check=True).stdout.strip()
        roots.append(os.path.dirname(common))
    except (OSError, subprocess.CalledProcessError):
        pass
    dirs += [os.path.join(os.path.dirname(r), "shared", "third_party") for r in roots]
    for d in dirs:
        path = os.path.join(d, name)
        if os.path.isfile(path):
            return os.path.normpath(path)
    return None
