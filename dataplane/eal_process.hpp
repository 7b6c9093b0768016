// What every sluice DPDK program (sluice-dataplane, sluice-gen) does around
// EAL: take EAL's arguments before "--" and leave the program's own, exit
// with a message that names the program, and stop cleanly on SIGINT/SIGTERM.
#pragma once

#include <signal.h>

#include <cstdlib>
#include <string>

#include <fmt/format.h>
#include <rte_eal.h>
#include <rte_errno.h>

namespace sluice {

// Returns false (having said why) when EAL refuses its arguments; otherwise
// argc/argv are left holding the program's options, argv[0] its name.
inline bool init_eal(int& argc, char**& argv, const char* program) {
    const int eal_args = rte_eal_init(argc, argv);
    if (eal_args < 0) {
        fmt::print(stderr, "{}: EAL initialisation failed: {}\n", program, rte_strerror(rte_errno));
        return false;
    }
    argc -= eal_args;
    argv += eal_args;
    argv[0] = const_cast<char*>(program);
    return true;
}

[[noreturn]] inline void die_after_eal(const char* program, const std::string& msg) {
    fmt::print(stderr, "{}: {}\n", program, msg);
    rte_eal_cleanup();
    std::exit(1);
}

inline void on_stop_signals(void (*handler)(int)) {
    struct sigaction sa{};
    sa.sa_handler = handler;
    sigaction(SIGINT, &sa, nullptr);
    sigaction(SIGTERM, &sa, nullptr);
}

}  // namespace sluice
