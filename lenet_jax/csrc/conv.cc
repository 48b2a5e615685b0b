// Direct stride-1 convolutions in the batch-minor CHWN layout, as XLA FFI
// handlers for the CPU (see lenet_jax/native.py, which builds and calls them).
//
// The batch is the innermost, contiguous axis, so every kernel vectorises over
// 16 images at a time and never builds im2col patches: each loaded vector of
// inputs feeds several fused multiply-adds whose accumulators stay in
// registers. Leading axes in front of (C, H, W, N) are independent problems
// (vmapped models); they and the output rows are split over XLA's intra-op
// thread pool.
//
//   ConvForward: y[g, co, oh, ow, n] = sum_{i, j, ci} w[g, i, j, ci, co] *
//                                      x[g, ci, oh + i - pt, ow + j - pl, n]
//                (out-of-range inputs are the zero padding; negative pads crop)
//   ConvWeightGrad: dw[g, i, j, ci, co] = sum_{oh, ow, n} dy[g, co, oh, ow, n] *
//                                         x[g, ci, oh + i - pt, ow + j - pl, n]
// The input gradient is ConvForward of dy with the flipped, transposed kernel
// (built in Python). MaxPoolForward/Backward pool non-overlapping windows and
// route the gradient to the first maximum of each, as XLA does;
// ConvMaxPoolForward is ConvForward then MaxPoolForward in one pass that never
// stores the full-size convolution. Written with GCC vector extensions
// (compiled with -march=native, so AVX-512 where the CPU has it).
#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <utility>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

typedef float v16 __attribute__((vector_size(64)));

// Loads, stores and horizontal sums for a vector of 16 floats and for the
// scalar used on the last N % 16 images.
template <class V>
struct Lanes;

template <>
struct Lanes<v16> {
  static constexpr int64_t kWidth = 16;
  static v16 Load(const float* p) {
    v16 v;
    std::memcpy(&v, p, sizeof(v));
    return v;
  }
  static void Store(float* p, v16 v) { std::memcpy(p, &v, sizeof(v)); }
  static float Sum(v16 v) {
    float s = 0.f;
    for (int k = 0; k < 16; ++k) s += v[k];
    return s;
  }
};

template <>
struct Lanes<float> {
  static constexpr int64_t kWidth = 1;
  static float Load(const float* p) { return *p; }
  static void Store(float* p, float v) { *p = v; }
  static float Sum(float v) { return v; }
};

typedef int32_t v16i __attribute__((vector_size(64)));
typedef uint8_t v16b __attribute__((vector_size(16)));

// The types of one step over the batch: 16 images, or one of the remainder.
struct VectorStep {
  using V = v16;    // values
  using I = v16i;   // tap indices
  using B = v16b;   // tap indices as stored, one byte each
  static constexpr int64_t kWidth = 16;
};
struct ScalarStep {
  using V = float;
  using I = int32_t;
  using B = uint8_t;
  static constexpr int64_t kWidth = 1;
};

template <class Step>
typename Step::I LoadTaps(const uint8_t* p) {
  if constexpr (Step::kWidth == 1) {
    return *p;
  } else {
    typename Step::B bytes;
    std::memcpy(&bytes, p, sizeof(bytes));
    return __builtin_convertvector(bytes, typename Step::I);
  }
}

template <class Step>
void StoreTaps(uint8_t* p, typename Step::I taps) {
  if constexpr (Step::kWidth == 1) {
    *p = static_cast<uint8_t>(taps);
  } else {
    const auto bytes = __builtin_convertvector(taps, typename Step::B);
    std::memcpy(p, &bytes, sizeof(bytes));
  }
}

struct Shape {
  int64_t groups, ci, h, w, n, kh, kw, co, pt, pl, ho, wo;
};

// Runs fn(0) .. fn(count - 1) on the calling thread and the pool's threads.
// Items are claimed from a shared counter, so a helper that starts late finds
// nothing left and returns; the state is shared, so it outlives the caller.
void ParallelFor(ffi::ThreadPool& pool, int64_t count,
                 const std::function<void(int64_t)>& fn) {
  int64_t helpers = std::min<int64_t>(pool.num_threads(), count) - 1;
  if (helpers <= 0) {
    for (int64_t i = 0; i < count; ++i) fn(i);
    return;
  }
  struct State {
    std::atomic<int64_t> next{0}, done{0};
    int64_t count;
    std::function<void(int64_t)> fn;
  };
  auto state = std::make_shared<State>();
  state->count = count;
  state->fn = fn;
  std::function<void()> work = [state] {
    for (int64_t i; (i = state->next.fetch_add(1)) < state->count;) {
      state->fn(i);
      state->done.fetch_add(1, std::memory_order_release);
    }
  };
  for (int64_t h = 0; h < helpers; ++h) pool.Schedule([state, work] { work(); });
  work();
  while (state->done.load(std::memory_order_acquire) < count) std::this_thread::yield();
}

int64_t Groups(ffi::Buffer<ffi::F32>::Dimensions dims, size_t rank) {
  int64_t groups = 1;
  for (size_t k = 0; k + rank < dims.size(); ++k) groups *= dims[k];
  return groups;
}

// ---------------------------------------------------------------- forward

// Output channels per register block, at most `most`, in equal blocks: 16
// channels with room for 12 run as 8 + 8 rather than 12 + 4.
int64_t ChannelBlock(int64_t channels, int64_t most) {
  const int64_t blocks = (channels + most - 1) / most;
  return (channels + blocks - 1) / blocks;
}

// acc[c] = y[c0 + c, oh, ow, n0:n0+width] of one group, c < COB.
template <class V, int COB>
inline void ConvAt(const Shape& s, const float* x, const float* w, int64_t oh, int64_t ow,
                   int64_t n0, int64_t c0, V (&acc)[COB]) {
  for (int c = 0; c < COB; ++c) acc[c] = V{};
  const int64_t channel_stride = s.h * s.w * s.n;
  for (int64_t i = 0; i < s.kh; ++i) {
    const int64_t ih = oh + i - s.pt;
    if (ih < 0 || ih >= s.h) continue;
    for (int64_t j = 0; j < s.kw; ++j) {
      const int64_t iw = ow + j - s.pl;
      if (iw < 0 || iw >= s.w) continue;
      const float* xp = x + (ih * s.w + iw) * s.n + n0;
      const float* wp = w + (i * s.kw + j) * s.ci * s.co + c0;
      for (int64_t ci = 0; ci < s.ci; ++ci, xp += channel_stride, wp += s.co) {
        const V xv = Lanes<V>::Load(xp);
        for (int c = 0; c < COB; ++c) acc[c] += wp[c] * xv;
      }
    }
  }
}

template <class V, int COB>
void ForwardTile(const Shape& s, const float* x, const float* w, float* y,
                 int64_t oh, int64_t ow, int64_t n0, int64_t c0) {
  V acc[COB];
  ConvAt<V, COB>(s, x, w, oh, ow, n0, c0, acc);
  const int64_t out_stride = s.ho * s.wo * s.n;
  float* yp = y + (c0 * s.ho + oh) * s.wo * s.n + ow * s.n + n0;
  for (int c = 0; c < COB; ++c) Lanes<V>::Store(yp + c * out_stride, acc[c]);
}

constexpr int kMaxForwardChannels = 12;  // accumulators held in registers

template <class V, int... C>
constexpr auto ForwardTable(std::integer_sequence<int, C...>) {
  return std::array{&ForwardTile<V, C + 1>...};
}

template <class V>
void ForwardTiles(const Shape& s, const float* x, const float* w, float* y,
                  int64_t oh, int64_t ow, int64_t n0) {
  static constexpr auto table =
      ForwardTable<V>(std::make_integer_sequence<int, kMaxForwardChannels>());
  const int64_t block = ChannelBlock(s.co, kMaxForwardChannels);
  for (int64_t c0 = 0; c0 < s.co; c0 += block) {
    const int64_t channels = std::min<int64_t>(block, s.co - c0);
    table[channels - 1](s, x, w, y, oh, ow, n0, c0);
  }
}

// One output row (g, oh).
void ForwardRow(const Shape& s, const float* x, const float* w, float* y, int64_t g,
                int64_t oh) {
  x += g * s.ci * s.h * s.w * s.n;
  w += g * s.kh * s.kw * s.ci * s.co;
  y += g * s.co * s.ho * s.wo * s.n;
  const int64_t vector_end = s.n - s.n % Lanes<v16>::kWidth;
  for (int64_t ow = 0; ow < s.wo; ++ow) {
    for (int64_t n0 = 0; n0 < vector_end; n0 += Lanes<v16>::kWidth)
      ForwardTiles<v16>(s, x, w, y, oh, ow, n0);
    for (int64_t n0 = vector_end; n0 < s.n; ++n0) ForwardTiles<float>(s, x, w, y, oh, ow, n0);
  }
}

// ------------------------------------------------- convolution + max pooling

// The k x k max pooling of the convolution, without writing the convolution:
// y[c, ph, pw, n] = max over the window's conv outputs, taps[...] = which
// (i * k + j) won, with the first maximum and NaN rules of PoolForwardStep.
// Here s.ho and s.wo are the pooled sizes.
template <class Step, int COB>
void ConvPoolTile(const Shape& s, int64_t k, const float* x, const float* w, float* y,
                  uint8_t* taps, int64_t ph, int64_t pw, int64_t n0, int64_t c0) {
  using V = typename Step::V;
  using I = typename Step::I;
  V best[COB], acc[COB];
  I which[COB];
  ConvAt<V, COB>(s, x, w, ph * k, pw * k, n0, c0, best);
  for (int c = 0; c < COB; ++c) which[c] = I{} * 0;
  for (int64_t t = 1; t < k * k; ++t) {
    ConvAt<V, COB>(s, x, w, ph * k + t / k, pw * k + t % k, n0, c0, acc);
    for (int c = 0; c < COB; ++c) {
      const auto wins = (acc[c] > best[c]) | ((acc[c] != acc[c]) & (best[c] == best[c]));
      best[c] = wins ? acc[c] : best[c];
      which[c] = wins ? I{} * 0 + static_cast<int32_t>(t) : which[c];
    }
  }
  const int64_t out_stride = s.ho * s.wo * s.n;
  const int64_t at = (c0 * s.ho + ph) * s.wo * s.n + pw * s.n + n0;
  for (int c = 0; c < COB; ++c) {
    Lanes<V>::Store(y + at + c * out_stride, best[c]);
    StoreTaps<Step>(taps + at + c * out_stride, which[c]);
  }
}

constexpr int kMaxPooledChannels = 8;  // best, which and acc: 3 x 8 registers

template <class Step, int... C>
constexpr auto ConvPoolTable(std::integer_sequence<int, C...>) {
  return std::array{&ConvPoolTile<Step, C + 1>...};
}

// One pooled row (g, ph).
void ConvPoolRow(const Shape& s, int64_t k, const float* x, const float* w, float* y,
                 uint8_t* taps, int64_t g, int64_t ph) {
  static constexpr auto vector_table =
      ConvPoolTable<VectorStep>(std::make_integer_sequence<int, kMaxPooledChannels>());
  static constexpr auto scalar_table =
      ConvPoolTable<ScalarStep>(std::make_integer_sequence<int, kMaxPooledChannels>());
  x += g * s.ci * s.h * s.w * s.n;
  w += g * s.kh * s.kw * s.ci * s.co;
  y += g * s.co * s.ho * s.wo * s.n;
  taps += g * s.co * s.ho * s.wo * s.n;
  const int64_t block = ChannelBlock(s.co, kMaxPooledChannels);
  const int64_t vector_end = s.n - s.n % VectorStep::kWidth;
  for (int64_t pw = 0; pw < s.wo; ++pw)
    for (int64_t c0 = 0; c0 < s.co; c0 += block) {
      const int64_t channels = std::min<int64_t>(block, s.co - c0);
      for (int64_t n0 = 0; n0 < vector_end; n0 += VectorStep::kWidth)
        vector_table[channels - 1](s, k, x, w, y, taps, ph, pw, n0, c0);
      for (int64_t n0 = vector_end; n0 < s.n; ++n0)
        scalar_table[channels - 1](s, k, x, w, y, taps, ph, pw, n0, c0);
    }
}

// ---------------------------------------------------------- weight gradient

// Adds to acc[i, j0:j0+JB, ci, c0:c0+COB] (vector partial sums) the products
// over one output row oh: all ow and the images [n_begin, n_end).
template <class V, int JB, int COB>
void WeightGradTile(const Shape& s, const float* x, const float* dy, V* acc, int64_t oh,
                    int64_t i, int64_t ci, int64_t j0, int64_t c0, int64_t n_begin,
                    int64_t n_end) {
  constexpr int64_t width = Lanes<V>::kWidth;
  const int64_t ih = oh + i - s.pt;
  V a[JB][COB];
  auto acc_at = [&](int j, int c) {
    return acc + ((i * s.kw + j0 + j) * s.ci + ci) * s.co + c0 + c;
  };
  for (int j = 0; j < JB; ++j)
    for (int c = 0; c < COB; ++c) a[j][c] = *acc_at(j, c);
  const float* x_row = x + (ci * s.h + ih) * s.w * s.n;
  const int64_t dy_stride = s.ho * s.wo * s.n;
  const float* dy_row = dy + (c0 * s.ho + oh) * s.wo * s.n;
  for (int64_t ow = 0; ow < s.wo; ++ow) {
    // Taps j with an input column inside the image: j_lo <= j < j_hi.
    const int64_t first = ow + j0 - s.pl;
    const int64_t j_lo = std::max<int64_t>(0, -first);
    const int64_t j_hi = std::min<int64_t>(JB, s.w - first);
    if (j_lo >= j_hi) continue;
    for (int64_t n0 = n_begin; n0 < n_end; n0 += width) {
      V d[COB];
      for (int c = 0; c < COB; ++c) d[c] = Lanes<V>::Load(dy_row + c * dy_stride + ow * s.n + n0);
      for (int j = 0; j < JB; ++j) {
        if (j < j_lo || j >= j_hi) continue;
        const V xv = Lanes<V>::Load(x_row + (first + j) * s.n + n0);
        for (int c = 0; c < COB; ++c) a[j][c] += d[c] * xv;
      }
    }
  }
  for (int j = 0; j < JB; ++j)
    for (int c = 0; c < COB; ++c) *acc_at(j, c) = a[j][c];
}

constexpr int kGradTaps = 5;      // JB: kernel columns per tile
constexpr int kGradChannels = 4;  // COB: output channels per tile

template <class V, int JB, int... C>
constexpr auto GradRow(std::integer_sequence<int, C...>) {
  return std::array{&WeightGradTile<V, JB, C + 1>...};
}

template <class V, int... J>
constexpr auto GradTable(std::integer_sequence<int, J...>) {
  return std::array{GradRow<V, J + 1>(std::make_integer_sequence<int, kGradChannels>())...};
}

template <class V>
void WeightGradRow(const Shape& s, const float* x, const float* dy, V* acc, int64_t oh,
                   int64_t n_begin, int64_t n_end) {
  static constexpr auto table =
      GradTable<V>(std::make_integer_sequence<int, kGradTaps>());
  for (int64_t i = 0; i < s.kh; ++i) {
    const int64_t ih = oh + i - s.pt;
    if (ih < 0 || ih >= s.h) continue;
    for (int64_t ci = 0; ci < s.ci; ++ci)
      for (int64_t j0 = 0; j0 < s.kw; j0 += kGradTaps)
        for (int64_t c0 = 0; c0 < s.co; c0 += kGradChannels) {
          const int64_t taps = std::min<int64_t>(kGradTaps, s.kw - j0);
          const int64_t channels = std::min<int64_t>(kGradChannels, s.co - c0);
          table[taps - 1][channels - 1](s, x, dy, acc, oh, i, ci, j0, c0, n_begin, n_end);
        }
  }
}

// Partial weight gradient of group g over output rows [oh_begin, oh_end).
void WeightGradRows(const Shape& s, const float* x, const float* dy, float* partial,
                    int64_t g, int64_t oh_begin, int64_t oh_end) {
  x += g * s.ci * s.h * s.w * s.n;
  dy += g * s.co * s.ho * s.wo * s.n;
  const int64_t size = s.kh * s.kw * s.ci * s.co;
  const int64_t vector_end = s.n - s.n % Lanes<v16>::kWidth;
  std::vector<v16> vector_acc(vector_end > 0 ? size : 0, v16{});
  std::vector<float> scalar_acc(size, 0.f);
  for (int64_t oh = oh_begin; oh < oh_end; ++oh) {
    if (vector_end > 0) WeightGradRow<v16>(s, x, dy, vector_acc.data(), oh, 0, vector_end);
    if (vector_end < s.n) WeightGradRow<float>(s, x, dy, scalar_acc.data(), oh, vector_end, s.n);
  }
  for (int64_t k = 0; k < size; ++k)
    partial[k] = scalar_acc[k] + (vector_end > 0 ? Lanes<v16>::Sum(vector_acc[k]) : 0.f);
}

// ------------------------------------------------------------- max pooling

// Non-overlapping k x k windows of a (groups, H, W, N) array, pooled to
// (groups, Ho, Wo, N) with Ho = H / k, Wo = W / k (a remainder is dropped).
struct PoolShape {
  int64_t groups, h, w, n, k, ho, wo;
};

ffi::Error ReadPoolShape(ffi::Buffer<ffi::F32>::Dimensions full,
                         ffi::Buffer<ffi::F32>::Dimensions pooled, int64_t k, PoolShape* s) {
  if (full.size() < 3 || pooled.size() != full.size())
    return ffi::Error::InvalidArgument("max pool: arrays of rank >= 3 and equal rank");
  const size_t r = full.size();
  *s = {Groups(full, 3), full[r - 3], full[r - 2], full[r - 1], k, pooled[r - 3], pooled[r - 2]};
  if (k < 1 || k > 15 || s->ho != s->h / k || s->wo != s->w / k)
    return ffi::Error::InvalidArgument("max pool: window must be 1..15 and fit the output");
  return ffi::Error::Success();
}

// Calls step(Step{}, g, oh, n0) for every group, pooled row and batch step.
template <class Fn>
void ForEachPoolStep(ffi::ThreadPool& pool, const PoolShape& s, const Fn& step) {
  const int64_t vector_end = s.n - s.n % VectorStep::kWidth;
  ParallelFor(pool, s.groups * s.ho, [&](int64_t item) {
    const int64_t g = item / s.ho, oh = item % s.ho;
    for (int64_t n0 = 0; n0 < vector_end; n0 += VectorStep::kWidth) step(VectorStep{}, g, oh, n0);
    for (int64_t n0 = vector_end; n0 < s.n; ++n0) step(ScalarStep{}, g, oh, n0);
  });
}

// The max of every window of row oh, and which tap (i * k + j) won it: the
// first maximum in row-major order, as XLA's select-and-scatter picks it; a
// NaN wins over numbers, so that it propagates.
template <class Step>
void PoolForwardStep(const PoolShape& s, const float* x, float* y, uint8_t* taps, int64_t oh,
                     int64_t n0) {
  using V = typename Step::V;
  using I = typename Step::I;
  for (int64_t ow = 0; ow < s.wo; ++ow) {
    const float* xp = x + (oh * s.k * s.w + ow * s.k) * s.n + n0;
    V best = Lanes<V>::Load(xp);
    I which = I{} * 0;
    for (int64_t i = 0; i < s.k; ++i)
      for (int64_t j = 0; j < s.k; ++j) {
        const V v = Lanes<V>::Load(xp + (i * s.w + j) * s.n);
        const auto wins = (v > best) | ((v != v) & (best == best));
        best = wins ? v : best;
        which = wins ? I{} * 0 + static_cast<int32_t>(i * s.k + j) : which;
      }
    const int64_t at = (oh * s.wo + ow) * s.n + n0;
    Lanes<V>::Store(y + at, best);
    StoreTaps<Step>(taps + at, which);
  }
}

// The gradient of row oh's windows: dy at the winning tap, 0 elsewhere.
template <class Step>
void PoolBackwardStep(const PoolShape& s, const float* dy, const uint8_t* taps, float* dx,
                      int64_t oh, int64_t n0) {
  using V = typename Step::V;
  using I = typename Step::I;
  for (int64_t ow = 0; ow < s.wo; ++ow) {
    const int64_t at = (oh * s.wo + ow) * s.n + n0;
    const V g = Lanes<V>::Load(dy + at);
    const I which = LoadTaps<Step>(taps + at);
    float* dp = dx + (oh * s.k * s.w + ow * s.k) * s.n + n0;
    for (int64_t i = 0; i < s.k; ++i)
      for (int64_t j = 0; j < s.k; ++j)
        Lanes<V>::Store(dp + (i * s.w + j) * s.n,
                        which == I{} * 0 + static_cast<int32_t>(i * s.k + j) ? g : V{} * 0.f);
  }
}

// ------------------------------------------------------------------ handlers

// The shape of a convolution of x (..., Ci, H, W, N) with a kernel (..., kh,
// kw, Ci, Co) into y (..., Co, Ho, Wo, N), checked for consistency.
ffi::Error ReadConvShape(ffi::Buffer<ffi::F32>::Dimensions x,
                         ffi::Buffer<ffi::F32>::Dimensions kernel,
                         ffi::Buffer<ffi::F32>::Dimensions y, int64_t pt, int64_t pl,
                         Shape* s) {
  if (x.size() < 4 || kernel.size() != x.size() || y.size() != x.size())
    return ffi::Error::InvalidArgument("conv: arrays of rank >= 4 and equal rank");
  const size_t r = x.size();
  *s = {Groups(x, 4), x[r - 4], x[r - 3], x[r - 2], x[r - 1], kernel[r - 4], kernel[r - 3],
        kernel[r - 1], pt, pl, y[r - 3], y[r - 2]};
  if (Groups(kernel, 4) != s->groups || Groups(y, 4) != s->groups || kernel[r - 2] != s->ci ||
      y[r - 4] != s->co || y[r - 1] != s->n)
    return ffi::Error::InvalidArgument("conv: inconsistent shapes");
  return ffi::Error::Success();
}

// Inputs x (..., Ci, H, W, N) and w (..., kh, kw, Ci, Co); output (..., Co, Ho, Wo, N).
ffi::Error ForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                       ffi::ResultBuffer<ffi::F32> y, int64_t pt, int64_t pl) {
  Shape s;
  if (auto e = ReadConvShape(x.dimensions(), w.dimensions(), y->dimensions(), pt, pl, &s);
      e.failure())
    return e;
  const float* xp = x.typed_data();
  const float* wp = w.typed_data();
  float* yp = y->typed_data();
  ParallelFor(pool, s.groups * s.ho, [&](int64_t item) {
    ForwardRow(s, xp, wp, yp, item / s.ho, item % s.ho);
  });
  return ffi::Error::Success();
}

// Inputs x (..., Ci, H, W, N) and dy (..., Co, Ho, Wo, N); output dw (..., kh, kw, Ci, Co).
ffi::Error WeightGradImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                          ffi::Buffer<ffi::F32> dy, ffi::ResultBuffer<ffi::F32> dw,
                          int64_t pt, int64_t pl) {
  Shape s;
  if (auto e = ReadConvShape(x.dimensions(), dw->dimensions(), dy.dimensions(), pt, pl, &s);
      e.failure())
    return e;
  // Each group's rows are cut into chunks so that there are a few items per
  // thread; every chunk sums into its own partial gradient, added up below.
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  const int64_t chunks = std::clamp<int64_t>((2 * threads + s.groups - 1) / s.groups, 1,
                                             std::max<int64_t>(1, s.ho));
  const int64_t size = s.kh * s.kw * s.ci * s.co;
  std::vector<float> partials(s.groups * chunks * size);
  const float* xp = x.typed_data();
  const float* dp = dy.typed_data();
  ParallelFor(pool, s.groups * chunks, [&](int64_t item) {
    const int64_t g = item / chunks, chunk = item % chunks;
    WeightGradRows(s, xp, dp, partials.data() + item * size, g, chunk * s.ho / chunks,
                   (chunk + 1) * s.ho / chunks);
  });
  float* out = dw->typed_data();
  for (int64_t g = 0; g < s.groups; ++g)
    for (int64_t k = 0; k < size; ++k) {
      float sum = 0.f;
      for (int64_t chunk = 0; chunk < chunks; ++chunk)
        sum += partials[(g * chunks + chunk) * size + k];
      out[g * size + k] = sum;
    }
  return ffi::Error::Success();
}

// x (..., Ci, H, W, N), w (..., kh, kw, Ci, Co) -> the max-pooled convolution
// y (..., Co, Ho / k, Wo / k, N) and its winning taps (same shape, uint8).
ffi::Error ConvPoolImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                        ffi::ResultBuffer<ffi::F32> y, ffi::ResultBuffer<ffi::U8> taps,
                        int64_t pt, int64_t pl, int64_t k) {
  Shape s;
  if (auto e = ReadConvShape(x.dimensions(), w.dimensions(), y->dimensions(), pt, pl, &s);
      e.failure())
    return e;
  if (k < 1 || k > 15)
    return ffi::Error::InvalidArgument("conv + max pool: window must be 1..15");
  const float* xp = x.typed_data();
  const float* wp = w.typed_data();
  float* yp = y->typed_data();
  uint8_t* tp = taps->typed_data();
  ParallelFor(pool, s.groups * s.ho, [&](int64_t item) {
    ConvPoolRow(s, k, xp, wp, yp, tp, item / s.ho, item % s.ho);
  });
  return ffi::Error::Success();
}

// x (..., H, W, N) -> y (..., Ho, Wo, N) and the winning taps (..., Ho, Wo, N) uint8.
ffi::Error PoolForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                           ffi::ResultBuffer<ffi::F32> y, ffi::ResultBuffer<ffi::U8> taps,
                           int64_t k) {
  PoolShape s;
  if (auto e = ReadPoolShape(x.dimensions(), y->dimensions(), k, &s); e.failure()) return e;
  const float* xp = x.typed_data();
  float* yp = y->typed_data();
  uint8_t* tp = taps->typed_data();
  const int64_t full = s.h * s.w * s.n, pooled = s.ho * s.wo * s.n;
  ForEachPoolStep(pool, s, [&](auto step, int64_t g, int64_t oh, int64_t n0) {
    PoolForwardStep<decltype(step)>(s, xp + g * full, yp + g * pooled, tp + g * pooled, oh, n0);
  });
  return ffi::Error::Success();
}

// dy and the winning taps (..., Ho, Wo, N) -> dx (..., H, W, N).
ffi::Error PoolBackwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> dy,
                            ffi::Buffer<ffi::U8> taps, ffi::ResultBuffer<ffi::F32> dx,
                            int64_t k) {
  PoolShape s;
  if (auto e = ReadPoolShape(dx->dimensions(), dy.dimensions(), k, &s); e.failure()) return e;
  const float* dp = dy.typed_data();
  const uint8_t* tp = taps.typed_data();
  float* xp = dx->typed_data();
  const int64_t full = s.h * s.w * s.n, pooled = s.ho * s.wo * s.n;
  // Rows and columns outside every window (H % k, W % k) get no gradient.
  if (s.h % k != 0 || s.w % k != 0 || s.ho == 0) std::fill(xp, xp + s.groups * full, 0.f);
  ForEachPoolStep(pool, s, [&](auto step, int64_t g, int64_t oh, int64_t n0) {
    PoolBackwardStep<decltype(step)>(s, dp + g * pooled, tp + g * pooled, xp + g * full, oh, n0);
  });
  return ffi::Error::Success();
}

}  // namespace

// Both convolution handlers: two float arrays in, one out, the top and left pads.
static auto ConvBinding() {
  return ffi::Ffi::Bind()
      .Ctx<ffi::ThreadPool>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Ret<ffi::Buffer<ffi::F32>>()
      .Attr<int64_t>("pad_top")
      .Attr<int64_t>("pad_left");
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(LenetConvForward, ForwardImpl, ConvBinding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(LenetConvWeightGrad, WeightGradImpl, ConvBinding());

XLA_FFI_DEFINE_HANDLER_SYMBOL(LenetMaxPoolForward, PoolForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::U8>>()
                                  .Attr<int64_t>("window"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(LenetMaxPoolBackward, PoolBackwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::U8>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("window"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(LenetConvMaxPoolForward, ConvPoolImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::U8>>()
                                  .Attr<int64_t>("pad_top")
                                  .Attr<int64_t>("pad_left")
                                  .Attr<int64_t>("window"));
