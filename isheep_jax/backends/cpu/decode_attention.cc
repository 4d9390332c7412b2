// Decode attention on the CPU: one new query token per row against a KV cache, reading only
// the slots its mask lets it see. An XLA FFI custom call (built by isheep_jax/backends/cpu/kernels.py).
//
// Why a kernel: XLA:CPU reads every slot of the cache, empty ones included, and its fused
// reductions stream the cache at a fraction of memory speed on one core. Here each
// (row, kv head) is a task; the tasks are shared out over XLA's intra-op thread pool, and
// every task reads its keys and values once, for all G query heads that share them.
//
// q [B, K, G, D] f32, k and v [B, K, S, D] f32, mask [B, S] pred -> out [B, K, G, D] f32.
// Softmax in f32 over the visible slots, scores scaled by 1/sqrt(D). A row with no visible
// slot gets zeros.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kMaxGroup = 16;  // query heads per kv head; the caller falls back beyond it

// One (row, kv head). `scores` holds G x S floats of scratch.
void AttendOne(const float* q, const float* k, const float* v, const bool* mask, float* out,
               int64_t g, int64_t s, int64_t d, float scale, float* scores) {
  float m[kMaxGroup], l[kMaxGroup];
  for (int64_t j = 0; j < g; ++j) m[j] = -INFINITY, l[j] = 0.0f;
  std::fill(out, out + g * d, 0.0f);
  bool any = false;
  for (int64_t t = 0; t < s; ++t) {
    if (!mask[t]) continue;
    any = true;
    const float* kt = k + t * d;
    for (int64_t j = 0; j < g; ++j) {
      const float* qj = q + j * d;
      float acc = 0.0f;
      for (int64_t e = 0; e < d; ++e) acc += qj[e] * kt[e];  // vectorised (associative math)
      acc *= scale;
      scores[j * s + t] = acc;
      m[j] = std::max(m[j], acc);
    }
  }
  if (!any) return;
  for (int64_t t = 0; t < s; ++t) {
    if (!mask[t]) continue;
    const float* vt = v + t * d;
    for (int64_t j = 0; j < g; ++j) {
      const float p = std::exp(scores[j * s + t] - m[j]);
      l[j] += p;
      float* o = out + j * d;
      for (int64_t e = 0; e < d; ++e) o[e] += p * vt[e];
    }
  }
  for (int64_t j = 0; j < g; ++j) {
    const float inv = 1.0f / l[j];
    float* o = out + j * d;
    for (int64_t e = 0; e < d; ++e) o[e] *= inv;
  }
}

// Tasks are claimed from a shared counter, by the calling thread and by helpers scheduled on
// the pool. The caller waits for completed tasks only, never for a helper to start: a helper
// that starts late finds nothing left and touches no buffer, so a busy pool cannot stall us.
struct Progress {
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
};

ffi::Error DecodeAttention(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                           ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::PRED> mask,
                           ffi::ResultBuffer<ffi::F32> out) {
  const auto qd = q.dimensions(), kd = k.dimensions(), vd = v.dimensions(), md = mask.dimensions();
  if (qd.size() != 4 || kd.size() != 4 || vd.size() != 4 || md.size() != 2)
    return ffi::Error::InvalidArgument("decode_attention: expected q, k, v of rank 4 and mask of rank 2");
  const int64_t b = kd[0], kh = kd[1], s = kd[2], d = kd[3], g = qd[2];
  for (int i = 0; i < 4; ++i)
    if (vd[i] != kd[i]) return ffi::Error::InvalidArgument("decode_attention: k and v shapes differ");
  if (qd[0] != b || qd[1] != kh || qd[3] != d || md[0] != b || md[1] != s)
    return ffi::Error::InvalidArgument("decode_attention: q, k and mask shapes do not match");
  if (g > kMaxGroup) return ffi::Error::InvalidArgument("decode_attention: more than 16 query heads per kv head");

  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  const float* qp = q.typed_data();
  const float* kp = k.typed_data();
  const float* vp = v.typed_data();
  const bool* mp = mask.typed_data();
  float* op = out->typed_data();
  const int64_t tasks = b * kh;
  auto progress = std::make_shared<Progress>();
  auto run = [=](Progress* w) {
    std::vector<float> scores(g * s);
    for (int64_t i; (i = w->next.fetch_add(1, std::memory_order_relaxed)) < tasks;) {
      AttendOne(qp + i * g * d, kp + i * s * d, vp + i * s * d, mp + (i / kh) * s, op + i * g * d, g, s, d,
                scale, scores.data());
      w->done.fetch_add(1, std::memory_order_release);
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), tasks) - 1;
  for (int64_t i = 0; i < helpers; ++i) pool.Schedule([progress, run] { run(progress.get()); });
  run(progress.get());
  while (progress->done.load(std::memory_order_acquire) < tasks) std::this_thread::yield();
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(IsheepDecodeAttention, DecodeAttention,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()   // q
                                  .Arg<ffi::Buffer<ffi::F32>>()   // k
                                  .Arg<ffi::Buffer<ffi::F32>>()   // v
                                  .Arg<ffi::Buffer<ffi::PRED>>()  // mask
                                  .Ret<ffi::Buffer<ffi::F32>>());
