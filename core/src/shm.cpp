#include "sluice/shm.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <thread>

#include <fmt/format.h>

namespace sluice {
namespace {

[[noreturn]] void fail_errno(const std::string& what, const std::string& path) {
    throw std::runtime_error(fmt::format("{} {}: {}", what, path, std::strerror(errno)));
}

void* map_segment(int fd, const std::string& path) {
    void* p = mmap(nullptr, shm_segment_size(), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) fail_errno("cannot map shared memory", path);
    return p;
}

void validate_header(const sluice_shm_header& h, const std::string& path) {
    if (h.magic != SLUICE_SHM_MAGIC)
        throw std::runtime_error(fmt::format(
            "{} is not a sluice shared-memory segment (magic {:#x}, expected {:#x})", path,
            h.magic, SLUICE_SHM_MAGIC));
    if (h.abi_version != SLUICE_ABI_VERSION)
        throw std::runtime_error(fmt::format(
            "{} has shared-memory ABI version {}, this build speaks version {}; stop the "
            "other sluice programs and remove the file",
            path, h.abi_version, SLUICE_ABI_VERSION));
    if (h.header_size != sizeof(sluice_shm_header) || h.segment_size != shm_segment_size())
        throw std::runtime_error(fmt::format(
            "{} has segment size {} (header {}), this build expects {} (header {})", path,
            h.segment_size, h.header_size, shm_segment_size(), sizeof(sluice_shm_header)));
}

// Creates and initialises a segment under a private name, then links it into
// place: link() fails with EEXIST if another process won the race, and no
// process ever sees a half-initialised header.
bool try_create(const std::string& path) {
    std::string tmp = path + ".XXXXXX";
    int fd = mkostemp(tmp.data(), O_CLOEXEC);  // unique per caller, mode 0600
    if (fd < 0) fail_errno("cannot create shared memory next to", path);
    struct Cleanup {
        int fd;
        const std::string& tmp;
        ~Cleanup() {
            close(fd);
            unlink(tmp.c_str());
        }
    } cleanup{fd, tmp};
    if (fchmod(fd, 0600) != 0) fail_errno("cannot set mode 0600 on", tmp);
    if (ftruncate(fd, static_cast<off_t>(shm_segment_size())) != 0)
        fail_errno("cannot size shared memory", tmp);
    auto* shm = static_cast<sluice_shm*>(map_segment(fd, tmp));
    shm->header.magic = SLUICE_SHM_MAGIC;
    shm->header.abi_version = SLUICE_ABI_VERSION;
    shm->header.header_size = sizeof(sluice_shm_header);
    shm->header.segment_size = shm_segment_size();
    munmap(shm, shm_segment_size());
    if (link(tmp.c_str(), path.c_str()) == 0) return true;
    if (errno == EEXIST) return false;
    fail_errno("cannot publish shared memory as", path);
}

}  // namespace

bool process_alive(uint32_t pid) {
    return pid != 0 && (kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM);
}

size_t shm_segment_size() {
    constexpr size_t kPage = 4096;
    return (sizeof(sluice_shm) + kPage - 1) / kPage * kPage;
}

ShmSegment ShmSegment::open_or_create(const std::string& path) {
    bool created = false;
    for (int attempt = 0; attempt < 2; ++attempt) {
        int fd = open(path.c_str(), O_RDWR | O_CLOEXEC);
        if (fd < 0 && errno == ENOENT) {
            created = try_create(path);  // lost races fall through to opening the winner's file
            continue;
        }
        if (fd < 0) fail_errno("cannot open shared memory", path);
        struct stat st{};
        if (fstat(fd, &st) != 0) {
            close(fd);
            fail_errno("cannot stat shared memory", path);
        }
        if (static_cast<size_t>(st.st_size) < sizeof(sluice_shm_header)) {
            close(fd);
            throw std::runtime_error(fmt::format(
                "{} is not a sluice shared-memory segment ({} bytes)", path, st.st_size));
        }
        if (static_cast<size_t>(st.st_size) != shm_segment_size()) {
            sluice_shm_header h{};
            if (pread(fd, &h, sizeof h, 0) != static_cast<ssize_t>(sizeof h)) std::memset(&h, 0, sizeof h);
            close(fd);
            validate_header(h, path);  // names the ABI mismatch when there is one
            throw std::runtime_error(fmt::format("{} is {} bytes, expected {}", path,
                                                 st.st_size, shm_segment_size()));
        }
        auto* shm = static_cast<sluice_shm*>(map_segment(fd, path));
        try {
            validate_header(shm->header, path);
        } catch (...) {
            munmap(shm, shm_segment_size());
            close(fd);
            throw;
        }
        return ShmSegment(path, fd, shm, created);
    }
    throw std::runtime_error(fmt::format("{} keeps disappearing while being opened", path));
}

void ShmSegment::lock_writer() {
    // A dataplane refused at start-up removes the segment it created; it
    // takes this lock for a moment first, and unlinks only if it gets it.
    // So: a holder that has not recorded a pid is such a dataplane (wait
    // for it), and a segment unlinked between our open and our lock is
    // opened again, so that sluiced never writes into a removed file that
    // no dataplane will find.
    for (int attempt = 0; attempt < 100; ++attempt) {
        if (flock(fd_, LOCK_EX | LOCK_NB) != 0) {
            if (errno != EWOULDBLOCK) fail_errno("cannot lock shared memory", path_);
            // The holder recorded its pid after taking the lock.
            const uint32_t holder = __atomic_load_n(&shm_->header.daemon_pid, __ATOMIC_ACQUIRE);
            if (holder != 0 && process_alive(holder))
                throw std::runtime_error(fmt::format(
                    "{} already has a writer: sluiced pid {} holds it; one sluiced per shared-memory segment",
                    path_, holder));
            usleep(10'000);
            continue;
        }
        struct stat mine{}, named{};
        if (fstat(fd_, &mine) == 0 && stat(path_.c_str(), &named) == 0 && mine.st_dev == named.st_dev &&
            mine.st_ino == named.st_ino)
            return;
        *this = open_or_create(path_);  // releases the old file's lock with its descriptor
    }
    throw std::runtime_error(fmt::format("{}: could not lock it as writer in 1 s (held without a pid, or "
                                         "removed each time it was opened)",
                                         path_));
}

ShmSegment::ShmSegment(ShmSegment&& o) noexcept
    : path_(std::move(o.path_)), fd_(o.fd_), shm_(o.shm_), created_(o.created_) {
    o.fd_ = -1;
    o.shm_ = nullptr;
}

ShmSegment& ShmSegment::operator=(ShmSegment&& o) noexcept {
    if (this != &o) {
        this->~ShmSegment();
        new (this) ShmSegment(std::move(o));
    }
    return *this;
}

ShmSegment::~ShmSegment() {
    if (shm_) munmap(shm_, shm_segment_size());
    if (fd_ >= 0) close(fd_);
}

sluice_config& ConfigPublisher::begin(std::chrono::milliseconds timeout) {
    const uint64_t gen = shm_generation(shm_);
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (unsigned i = 0; i < SLUICE_MAX_LCORES; ++i) {
        sluice_lcore_state& st = shm_->lcore_state[i];
        for (;;) {
            if (__atomic_load_n(&st.online, __ATOMIC_SEQ_CST) == 0) break;
            if (__atomic_load_n(&st.quiescent_generation, __ATOMIC_ACQUIRE) >= gen) break;
            // A crashed dataplane leaves its lcores marked online forever.
            if (!process_alive(__atomic_load_n(&shm_->header.dataplane_pid, __ATOMIC_ACQUIRE)))
                break;
            if (std::chrono::steady_clock::now() > deadline)
                throw std::runtime_error(fmt::format(
                    "dataplane lcore slot {} is still at generation {} after {} ms; not "
                    "publishing generation {}",
                    i, __atomic_load_n(&st.quiescent_generation, __ATOMIC_ACQUIRE),
                    timeout.count(), gen + 1));
            std::this_thread::sleep_for(std::chrono::microseconds(100));
        }
    }
    return shm_->config[(gen + 1) & 1];
}

uint64_t ConfigPublisher::commit() {
    const uint64_t next = shm_generation(shm_) + 1;
    shm_->config[next & 1].generation = next;
    __atomic_store_n(&shm_->header.generation, next, __ATOMIC_RELEASE);
    return next;
}

LcoreReader::LcoreReader(sluice_shm* shm, unsigned lcore_slot)
    : shm_(shm), slot_(lcore_slot), state_(&shm->lcore_state[lcore_slot]) {
    if (lcore_slot >= SLUICE_MAX_LCORES)
        throw std::invalid_argument(fmt::format("lcore slot {} exceeds the limit of {}",
                                                lcore_slot, SLUICE_MAX_LCORES));
    // Quiescent at the current generation before going online, then read the
    // generation only after online is visible (seq_cst on both sides), so a
    // publisher that skipped this lcore as offline never overwrites the copy
    // it is about to read.
    __atomic_store_n(&state_->quiescent_generation, shm_generation(shm), __ATOMIC_RELEASE);
    __atomic_store_n(&state_->online, 1, __ATOMIC_SEQ_CST);
    current_ = shm_generation(shm);
}

LcoreReader::~LcoreReader() { __atomic_store_n(&state_->online, 0, __ATOMIC_SEQ_CST); }

}  // namespace sluice
