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

// The drivers of block-plan cases: the launches of the schedule (src/backend/cuda/blocks.rs,
// written out by the test), each after its blocks of inner products S_k^T, computed here in
// long double from the packed input and rounded to T, as cuBLAS would hand them over.

// Pair input k: its i-variable's and j-variable's offsets in the packed input, and their
// dimension.
struct lk_emu_pair {
    long long x, y;
    int dim;
    int distance; // 1: the block holds squared distances (the module's `_distances` helper)
};
// One launch: rows [r0, r1), terms [t0, t1), its grid, its first chunk (-1: outputs).
struct lk_emu_launch_of {
    int r0, r1, t0, t1;
    unsigned blocks_x, chunks;
    int chunk, chunk_base;
};
// A row block: rows [r0, r1), chunks of states in all, its launches.
struct lk_emu_row_block {
    int r0, r1, chunks;
    std::vector<lk_emu_launch_of> launches;
};

template <class T> std::vector<T> lk_emu_read_input(const std::string& base, long long len) {
    std::vector<T> in((size_t)len);
    std::FILE* f = std::fopen((base + ".in").c_str(), "rb");
    if (!f || std::fread(in.data(), sizeof(T), in.size(), f) != in.size()) {
        lk_emu_fail("cannot read " + base + ".in");
    }
    std::fclose(f);
    return in;
}

inline void lk_emu_write(const std::string& path, const void* p, size_t bytes) {
    std::FILE* f = std::fopen(path.c_str(), "wb");
    if (!f || std::fwrite(p, 1, bytes, f) != bytes) lk_emu_fail("cannot write " + path);
    std::fclose(f);
}

// The blocks S_k^T of rows [r0, r1) and terms [t0, t1): pair k of (r0 + i, t0 + j) at
// [k][j * (r1 - r0) + i].
template <class T>
std::vector<std::vector<T>> lk_emu_inner(const std::vector<T>& in,
                                         const std::vector<lk_emu_pair>& pairs, int r0, int r1,
                                         int t0, int t1) {
    std::vector<std::vector<T>> out;
    const long long rows = r1 - r0;
    for (const lk_emu_pair& p : pairs) {
        std::vector<T> s((size_t)(rows * (t1 - t0) > 0 ? rows * (t1 - t0) : 1));
        for (int j = t0; j < t1; ++j) {
            for (int i = r0; i < r1; ++i) {
                long double acc = 0;
                for (int c = 0; c < p.dim; ++c) {
                    acc += (long double)in[(size_t)(p.x + (long long)i * p.dim + c)] *
                           (long double)in[(size_t)(p.y + (long long)j * p.dim + c)];
                }
                s[(size_t)((j - t0) * rows + (i - r0))] = (T)acc;
            }
        }
        out.push_back(std::move(s));
    }
    return out;
}

// Runs block-plan case `id` twice (poisoned as `lk_emu_case` does) and writes its outputs.
// `main(in, r0, t0, rows, terms, chunk, out_vals, out_idx, part_vals, part_idx, s, jbase,
// chunk_base)` calls the module's main kernel with the launch's input offsets.
template <class T>
void lk_emu_blocks_case(
    const std::string& dir, int id, const lk_emu_shape& s, const std::vector<lk_emu_pair>& pairs,
    const std::vector<lk_emu_row_block>& schedule,
    void (*main)(const T*, int, int, int, int, int, T*, long long*, double*, long long*,
                 const T* const*, long long, int),
    void (*combine)(int, int, const double*, const long long*, T*, long long*),
    void (*fix)(const T*, const lk_emu_pair&, int, int, int, int, T*)) {
    const std::string base = dir + "/case_" + std::to_string(id);
    const std::vector<T> in = lk_emu_read_input<T>(base, s.in_len);
    const auto at_least_one = [](long long n) { return (size_t)(n > 0 ? n : 1); };
    const long long rows = s.rows;
    for (int run = 0; run < 2; ++run) {
        const auto poison = [run](auto& v) {
            std::memset((void*)v.data(), run == 0 ? 0xff : 0x41, v.size() * sizeof(v[0]));
        };
        std::vector<T> out_vals(at_least_one(rows * s.out_vals));
        std::vector<long long> out_idx(at_least_one(rows * s.out_idx));
        poison(out_vals);
        poison(out_idx);
        for (const lk_emu_row_block& rb : schedule) {
            const long long n = rb.r1 - rb.r0;
            std::vector<double> part_vals(at_least_one(rb.chunks * n * s.state_vals));
            std::vector<long long> part_idx(at_least_one(rb.chunks * n * s.state_idx));
            poison(part_vals);
            poison(part_idx);
            T* ov = out_vals.data() + rb.r0 * s.out_vals;
            long long* oi = out_idx.data() + rb.r0 * s.out_idx;
            for (const lk_emu_launch_of& l : rb.launches) {
                auto blocks = lk_emu_inner(in, pairs, l.r0, l.r1, l.t0, l.t1);
                for (size_t k = 0; k < pairs.size(); ++k) {
                    if (pairs[k].distance) {
                        fix(in.data(), pairs[k], l.r0, l.t0, l.r1 - l.r0, l.t1 - l.t0,
                            blocks[k].data());
                    }
                }
                std::vector<const T*> sp;
                for (const auto& b : blocks) sp.push_back(b.data());
                lk_emu_launch(l.blocks_x, l.chunks, s.block, [&] {
                    main(in.data(), l.r0, l.t0, l.r1 - l.r0, l.t1 - l.t0, l.chunk, ov, oi,
                         part_vals.data(), part_idx.data(), sp.data(), l.t0, l.chunk_base);
                });
            }
            if (rb.chunks > 1) {
                lk_emu_launch((unsigned)((n + 255) / 256), 1, 256, [&] {
                    combine((int)n, rb.chunks, part_vals.data(), part_idx.data(), ov, oi);
                });
            }
        }
        const std::string name = base + ".run" + std::to_string(run);
        lk_emu_write(name + ".vals", out_vals.data(), (size_t)(rows * s.out_vals) * sizeof(T));
        lk_emu_write(name + ".idx", out_idx.data(), (size_t)(rows * s.out_idx) * sizeof(long long));
    }
}

// Runs the matrix-product case `id` (a `Sum` of c_ij v_j, v at offset `v_off` with `e`
// columns) twice: per launch the coefficient kernel writes C^T on a `gx` x `gy` grid
// (`values(in, r0, t0, rows, terms, s, coef)` calls it with the launch's offsets), then
// out[r0..r1) += C_blk V_blk, accumulated in T as cuBLAS does with beta = 1.
template <class T>
void lk_emu_matmul_case(const std::string& dir, int id, long long in_len, int rows_all,
                        long long v_off, int e, const std::vector<lk_emu_pair>& pairs,
                        const std::vector<lk_emu_launch_of>& launches,
                        void (*values)(const T*, int, int, int, int, const T* const*, T*),
                        void (*fix)(const T*, const lk_emu_pair&, int, int, int, int, T*)) {
    const std::string base = dir + "/case_" + std::to_string(id);
    const std::vector<T> in = lk_emu_read_input<T>(base, in_len);
    for (int run = 0; run < 2; ++run) {
        std::vector<T> out((size_t)rows_all * e > 0 ? (size_t)rows_all * e : 1, (T)0);
        for (const lk_emu_launch_of& l : launches) {
            const long long n = l.r1 - l.r0, m = l.t1 - l.t0;
            auto blocks = lk_emu_inner(in, pairs, l.r0, l.r1, l.t0, l.t1);
            for (size_t k = 0; k < pairs.size(); ++k) {
                if (pairs[k].distance) {
                    fix(in.data(), pairs[k], l.r0, l.t0, (int)n, (int)m, blocks[k].data());
                }
            }
            std::vector<const T*> sp;
            for (const auto& b : blocks) sp.push_back(b.data());
            std::vector<T> coef((size_t)(n * m > 0 ? n * m : 1));
            std::memset((void*)coef.data(), run == 0 ? 0xff : 0x41, coef.size() * sizeof(T));
            lk_emu_launch(l.blocks_x, l.chunks, 256, [&] {
                values(in.data(), l.r0, l.t0, (int)n, (int)m, sp.data(), coef.data());
            });
            for (long long i = 0; i < n; ++i) {
                for (int c = 0; c < e; ++c) {
                    T acc = 0;
                    for (long long j = 0; j < m; ++j) {
                        acc += coef[(size_t)(j * n + i)] *
                               in[(size_t)(v_off + (l.t0 + j) * e + c)];
                    }
                    out[(size_t)((l.r0 + i) * e + c)] += acc;
                }
            }
        }
        const std::string name = base + ".run" + std::to_string(run);
        lk_emu_write(name + ".vals", out.data(), (size_t)rows_all * e * sizeof(T));
        lk_emu_write(name + ".idx", out.data(), 0);
    }
}

#endif // LK_CUDA_HOST_SHIM_H
