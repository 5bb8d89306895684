// Host C++ stand-ins for the CUDA constructs of generated modules, so that a whole module (its
// main and combine kernels) runs on the CPU: tests/cuda_emulation_tests.rs includes this file
// before the modules and launches their kernels with `lk_emu_launch`.
//
// A launch runs the blocks one after another on `block` std::threads (one per CUDA thread,
// kept from launch to launch), so a `__shared__` array can be a function-local `static`: all
// threads of the running block share it. `__syncthreads()` is a std::barrier over the block's threads; a thread that
// returns from the kernel leaves that barrier (as an exited GPU thread no longer takes part in
// `bar.sync`), and a second barrier separates the blocks.
#ifndef LK_CUDA_HOST_SHIM_H
#define LK_CUDA_HOST_SHIM_H

#include <algorithm>
#include <barrier>
#include <condition_variable>
#include <math.h>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n))) // as CUDA defines it for g++
// `__restrict__` is a keyword of g++ and clang++ already.

struct lk_emu_uint3 {
    unsigned x, y, z;
};
inline thread_local lk_emu_uint3 threadIdx, blockIdx, blockDim, gridDim;

struct alignas(16) float4 {
    float x, y, z, w;
};
struct alignas(16) double2 {
    double x, y;
};

inline float __int_as_float(int v) { float f; std::memcpy(&f, &v, sizeof f); return f; }
inline float __uint_as_float(unsigned v) { float f; std::memcpy(&f, &v, sizeof f); return f; }
inline unsigned __float_as_uint(float v) { unsigned u; std::memcpy(&u, &v, sizeof u); return u; }
inline int __float_as_int(float v) { int u; std::memcpy(&u, &v, sizeof u); return u; }
inline double __longlong_as_double(long long v) { double d; std::memcpy(&d, &v, sizeof d); return d; }
inline long long __double_as_longlong(double v) { long long u; std::memcpy(&u, &v, sizeof u); return u; }

inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
// Math: <math.h> has the float and double overloads CUDA has; the device's fast variants are
// their accurate host versions.
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __fdividef(float a, float b) { return a / b; }
template <class T> inline T __ldg(const T* p) { return *p; }

// The barrier of the running block's `__syncthreads()`.
inline std::barrier<>* lk_emu_block_sync = nullptr;

inline void __syncthreads() { lk_emu_block_sync->arrive_and_wait(); }

// Threads kept for all launches (creating a block's threads for every launch costs more than
// the kernels): `run(n, job)` runs `job(t)` on threads t = 0..n-1 and returns when all are done.
class lk_emu_pool {
public:
    ~lk_emu_pool() {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            stop_ = true;
            ++generation_;
        }
        wake_.notify_all();
        for (auto& th : threads_) th.join();
    }

    void run(unsigned n, const std::function<void(unsigned)>& job) {
        std::unique_lock<std::mutex> lock(mutex_);
        while (threads_.size() < n) {
            const unsigned t = (unsigned)threads_.size();
            threads_.emplace_back([this, t] { work(t); });
        }
        job_ = &job;
        size_ = n;
        pending_ = n;
        ++generation_;
        wake_.notify_all();
        done_.wait(lock, [&] { return pending_ == 0; });
    }

private:
    void work(unsigned t) {
        unsigned long long seen = 0;
        std::unique_lock<std::mutex> lock(mutex_);
        for (;;) {
            wake_.wait(lock, [&] { return generation_ != seen; });
            seen = generation_;
            if (stop_) return;
            if (t >= size_) continue;
            const std::function<void(unsigned)>* job = job_;
            lock.unlock();
            (*job)(t);
            lock.lock();
            if (--pending_ == 0) done_.notify_one();
        }
    }

    std::mutex mutex_;
    std::condition_variable wake_, done_;
    std::vector<std::thread> threads_;
    const std::function<void(unsigned)>* job_ = nullptr;
    unsigned size_ = 0, pending_ = 0;
    unsigned long long generation_ = 0;
    bool stop_ = false;
};

inline lk_emu_pool lk_emu_threads;

// Runs `kernel` (a call of a `__global__` function with its arguments) on a grid of
// `gx` x `gy` blocks of `block` threads.
inline void lk_emu_launch(unsigned gx, unsigned gy, unsigned block,
                          const std::function<void()>& kernel) {
    std::unique_ptr<std::barrier<>> sync(new std::barrier<>(block));
    lk_emu_block_sync = sync.get();
    // Runs once all threads finished a block: a fresh `__syncthreads()` barrier for the next.
    auto next_block = [&]() noexcept {
        sync.reset(new std::barrier<>(block));
        lk_emu_block_sync = sync.get();
    };
    std::barrier<decltype(next_block)> between(block, next_block);
    lk_emu_threads.run(block, [&](unsigned t) {
        threadIdx = {t, 0, 0};
        blockDim = {block, 1, 1};
        gridDim = {gx, gy, 1};
        for (unsigned y = 0; y < gy; ++y) {
            for (unsigned x = 0; x < gx; ++x) {
                blockIdx = {x, y, 0};
                kernel();
                lk_emu_block_sync->arrive_and_drop();
                between.arrive_and_wait();
            }
        }
    });
}

// The driver of one case (tests/cuda_emulation_tests.rs generates a call per case).

// Sizes of a case: the packed input's elements, the launch, and per row the outputs' and the
// chunk states' slots.
struct lk_emu_shape {
    long long in_len;
    int rows, terms, chunk;
    unsigned blocks_x, chunks, block;
    long long out_vals, out_idx, state_vals, state_idx;
};

[[noreturn]] inline void lk_emu_fail(const std::string& what) {
    std::fprintf(stderr, "emulation driver: %s\n", what.c_str());
    std::exit(3);
}

// Runs case `id`: reads `dir/case_<id>.in` (the packed inputs, as T), then twice, with the
// outputs and chunk states poisoned first with 0xff bytes (NaN in every float type) and
// indices -7, then with 0x41 bytes (finite values, a large index: not an empty slot): the main
// kernel on its grid, the combine kernel when there are chunks; writes the raw outputs to
// `dir/case_<id>.run<r>.vals` and `.idx`.
// `main(in, rows, terms, chunk, out_vals, out_idx, part_vals, part_idx)` calls the module's
// main kernel with its input offsets.
template <class T>
void lk_emu_case(const std::string& dir, int id, const lk_emu_shape& s,
                 void (*main)(const T*, int, int, int, T*, long long*, double*, long long*),
                 void (*combine)(int, int, const double*, const long long*, T*, long long*)) {
    const std::string base = dir + "/case_" + std::to_string(id);
    std::vector<T> in((size_t)s.in_len);
    {
        std::FILE* f = std::fopen((base + ".in").c_str(), "rb");
        if (!f || std::fread(in.data(), sizeof(T), in.size(), f) != in.size()) {
            lk_emu_fail("cannot read " + base + ".in");
        }
        std::fclose(f);
    }
    const auto at_least_one = [](long long n) { return (size_t)(n > 0 ? n : 1); };
    const long long rows = s.rows, chunks = s.chunks;
    for (int run = 0; run < 2; ++run) {
        std::vector<T> out_vals(at_least_one(rows * s.out_vals));
        std::vector<long long> out_idx(at_least_one(rows * s.out_idx));
        std::vector<double> part_vals(at_least_one(chunks * rows * s.state_vals));
        std::vector<long long> part_idx(at_least_one(chunks * rows * s.state_idx));
        const auto poison = [run](auto& v) {
            std::memset((void*)v.data(), run == 0 ? 0xff : 0x41, v.size() * sizeof(v[0]));
        };
        poison(out_vals);
        poison(part_vals);
        if (run == 0) {
            std::fill(out_idx.begin(), out_idx.end(), -7);
            std::fill(part_idx.begin(), part_idx.end(), -7);
        } else {
            poison(out_idx);
            poison(part_idx);
        }
        lk_emu_launch(s.blocks_x, s.chunks, s.block, [&] {
            main(in.data(), s.rows, s.terms, s.chunk, out_vals.data(), out_idx.data(),
                 part_vals.data(), part_idx.data());
        });
        if (s.chunks > 1) {
            lk_emu_launch((unsigned)((rows + 255) / 256), 1, 256, [&] {
                combine(s.rows, (int)s.chunks, part_vals.data(), part_idx.data(),
                        out_vals.data(), out_idx.data());
            });
        }
        const std::string name = base + ".run" + std::to_string(run);
        const auto write = [&](const std::string& path, const void* p, size_t bytes) {
            std::FILE* f = std::fopen(path.c_str(), "wb");
            if (!f || std::fwrite(p, 1, bytes, f) != bytes) lk_emu_fail("cannot write " + path);
            std::fclose(f);
        };
        write(name + ".vals", out_vals.data(), (size_t)(rows * s.out_vals) * sizeof(T));
        write(name + ".idx", out_idx.data(), (size_t)(rows * s.out_idx) * sizeof(long long));
    }
}

#endif // LK_CUDA_HOST_SHIM_H
