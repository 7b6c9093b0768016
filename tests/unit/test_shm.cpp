#include <catch2/catch.hpp>

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <thread>
#include <atomic>
#include <vector>

#include "sluice/shm.hpp"

using namespace sluice;

namespace {

struct TempPath {
    TempPath() : path(fmt_path()) { std::filesystem::remove(path); }
    ~TempPath() { std::filesystem::remove(path); }
    static std::string fmt_path() {
        static int n = 0;
        return (std::filesystem::temp_directory_path() /
                ("sluice-test-shm-" + std::to_string(getpid()) + "-" + std::to_string(n++)))
            .string();
    }
    std::string path;
};

}  // namespace

TEST_CASE("Segment is created mode 0600 with a valid header, and reopened") {
    TempPath tmp;
    {
        ShmSegment seg = ShmSegment::open_or_create(tmp.path);
        CHECK(seg->header.magic == SLUICE_SHM_MAGIC);
        CHECK(seg->header.abi_version == SLUICE_ABI_VERSION);
        CHECK(shm_generation(seg.get()) == 0);
        seg->header.generation = 7;
    }
    struct stat st{};
    REQUIRE(stat(tmp.path.c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0600);
    CHECK(static_cast<size_t>(st.st_size) == shm_segment_size());
    ShmSegment again = ShmSegment::open_or_create(tmp.path);
    CHECK(shm_generation(again.get()) == 7);
}

TEST_CASE("created() tells the call that published the segment from the ones that opened it") {
    TempPath tmp;
    ShmSegment first = ShmSegment::open_or_create(tmp.path);
    CHECK(first.created());
    ShmSegment second = ShmSegment::open_or_create(tmp.path);
    CHECK_FALSE(second.created());
}

TEST_CASE("The writer lock follows the path: a segment removed before the lock is opened again") {
    // A dataplane refused at start-up removes the segment it created; a
    // sluiced that opened it just before must not lock and write the
    // removed file, which no dataplane would find.
    TempPath tmp;
    ShmSegment seg = ShmSegment::open_or_create(tmp.path);
    seg->header.generation = 5;
    REQUIRE(unlink(tmp.path.c_str()) == 0);
    seg.lock_writer();
    struct stat mine{}, named{};
    REQUIRE(fstat(seg.fd(), &mine) == 0);
    REQUIRE(stat(tmp.path.c_str(), &named) == 0);
    CHECK(mine.st_ino == named.st_ino);
    CHECK(shm_generation(seg.get()) == 0);  // the new segment, not the removed one
    // And it holds the lock: a second writer on the path is refused.
    seg->header.daemon_pid = static_cast<uint32_t>(getpid());
    ShmSegment other = ShmSegment::open_or_create(tmp.path);
    CHECK_THROWS_WITH(other.lock_writer(), Catch::Contains("already has a writer"));
}

TEST_CASE("A foreign file is refused, naming the path") {
    TempPath tmp;
    {
        std::ofstream f(tmp.path);
        f << std::string(shm_segment_size(), 'x');
    }
    CHECK_THROWS_WITH(ShmSegment::open_or_create(tmp.path),
                      Catch::Contains(tmp.path) && Catch::Contains("not a sluice"));
}

TEST_CASE("Another ABI version is refused with both versions named") {
    TempPath tmp;
    {
        ShmSegment seg = ShmSegment::open_or_create(tmp.path);
        seg->header.abi_version = SLUICE_ABI_VERSION + 1;
    }
    CHECK_THROWS_WITH(ShmSegment::open_or_create(tmp.path),
                      Catch::Contains("version " + std::to_string(SLUICE_ABI_VERSION + 1)) &&
                          Catch::Contains("speaks version " + std::to_string(SLUICE_ABI_VERSION)));
}

TEST_CASE("Publishing flips the live copy and bumps the generation") {
    TempPath tmp;
    ShmSegment seg = ShmSegment::open_or_create(tmp.path);
    ConfigPublisher pub(seg.get());
    sluice_config& c1 = pub.begin(std::chrono::milliseconds(100));
    CHECK(&c1 == &seg->config[1]);
    c1.hash_seed = 11;
    CHECK(pub.commit() == 1);
    LcoreReader reader(seg.get(), 0);
    CHECK(reader.acquire().hash_seed == 11);
    CHECK(reader.acquire().generation == 1);
}

TEST_CASE("The publisher waits for online lcores before reusing a copy") {
    TempPath tmp;
    ShmSegment seg = ShmSegment::open_or_create(tmp.path);
    seg->header.dataplane_pid = static_cast<uint32_t>(getpid());  // a live "dataplane"
    ConfigPublisher pub(seg.get());
    LcoreReader reader(seg.get(), 3);
    const sluice_config* in_use = &reader.acquire();  // generation 0: copy 0
    pub.begin(std::chrono::milliseconds(100));         // writes copy 1: allowed
    pub.commit();
    // The reader has not reported quiescence since generation 0, so copy 0
    // (the next one to write) may still be in use: begin() must time out.
    CHECK_THROWS_WITH(pub.begin(std::chrono::milliseconds(50)), Catch::Contains("lcore slot 3"));
    CHECK(in_use == &seg->config[0]);
    reader.acquire();
    reader.quiescent();
    CHECK(&pub.begin(std::chrono::milliseconds(100)) == &seg->config[0]);
}

TEST_CASE("Lcores of a dead dataplane do not block publication") {
    TempPath tmp;
    ShmSegment seg = ShmSegment::open_or_create(tmp.path);
    LcoreReader reader(seg.get(), 0);
    seg->header.dataplane_pid = 0x7ffffff0;  // no such process
    ConfigPublisher pub(seg.get());
    pub.begin(std::chrono::milliseconds(50));
    pub.commit();
    CHECK_NOTHROW(pub.begin(std::chrono::milliseconds(50)));
}

TEST_CASE("Two processes racing to create get one segment") {
    TempPath tmp;
    std::vector<std::thread> threads;
    std::atomic<int> ok{0};
    for (int i = 0; i < 4; ++i)
        threads.emplace_back([&] {
            ShmSegment s = ShmSegment::open_or_create(tmp.path);
            ok += s->header.magic == SLUICE_SHM_MAGIC;
        });
    for (auto& t : threads) t.join();
    CHECK(ok == 4);
}
