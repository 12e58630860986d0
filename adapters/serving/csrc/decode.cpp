// One decode step of a Llama model (one new token per row, every decoder layer) in one native call, for
// the serving runtime's CPU path (adapters/_native.py builds and loads this file; adapters/_fastpath.py
// LlamaDecode calls it). Written out in Python a layer is ~85 small torch ops, each paying 1.5-2 us
// of dispatch for a few hundred nanoseconds of arithmetic at one row.
//
// Every operation matches the model's own in dtype and rounding: bf16 activations, RMSNorm computed in
// fp32 and rounded as LlamaRMSNorm does, the rotary embedding rounded per product as transformers'
// apply_rotary_pos_emb in bf16, attention in fp32 (as adapters/_fastpath.py decode_attention), SiLU and
// the gate product rounded to bf16 as torch does. Sums run in another order than torch's vectorised
// ones, so results agree to rounding (tests compare logits with the Python path's).
//
// Ops (torch.ops.loopbot.*): register_model, then decode: every layer of a step in one call, each
// row's LoRA deltas included, on one thread or split across helper threads. norm, attend and silu_mul
// expose decode's own building blocks one by one (tests check their rounding against torch's).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <condition_variable>
#include <exception>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include "int4_matmul.h"

namespace {

using at::BFloat16;
using at::Tensor;

using int4_matmul::from_bits;  // bf16 <-> float on the raw bits (int4_matmul.h)
using int4_matmul::to_bits;
inline float f32(BFloat16 v) { return from_bits(v.x); }
inline BFloat16 to_bf16(float v) { return BFloat16(to_bits(v), BFloat16::from_bits()); }
inline float round_bf16(float v) { return from_bits(to_bits(v)); }

constexpr int LANES = 16;  // independent partial sums: lets the compiler vectorise dot products

// exp(x) for x <= 88.7, 0 below -87.3 (Cephes' expf: 2^n * a polynomial of the remainder, within ~1 ulp of the
// exact value, as torch's own vectorised exp): plain arithmetic, so loops over it vectorise.
inline float exp_approx(float in) {
  float x = std::max(in, -87.3f);
  float n = std::floor(x * 1.44269504088896341f + 0.5f);
  float r = x - n * 0.693359375f;
  r -= n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return in < -87.3f ? 0.0f : p * scale;  // below the smallest normal float (and -inf): 0
}

// SiLU rounded to bf16 (torch's bf16 silu), times `up`, rounded to bf16: `width` values.
void silu_mul_row(const BFloat16* gate, const BFloat16* up, BFloat16* out, int64_t width) {
  const uint16_t* g16 = reinterpret_cast<const uint16_t*>(gate);
  const uint16_t* u16 = reinterpret_cast<const uint16_t*>(up);
  uint16_t* o16 = reinterpret_cast<uint16_t*>(out);
  for (int64_t i = 0; i < width; ++i) {
    float g = from_bits(g16[i]);
    float e = exp_approx(std::min(-g, 88.7f));
    o16[i] = to_bits(round_bf16(g / (1.0f + e)) * from_bits(u16[i]));
  }
}

void check_bf16(const Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kBFloat16, "loopbot decode: ", name, " must be bfloat16");
  TORCH_CHECK(t.stride(-1) == 1, "loopbot decode: ", name, " must be contiguous in its last dimension");
}

// out[r] = weight * bf16(x[r] * rsqrt(mean(x[r]^2) + eps)), rows of `hidden` values (LlamaRMSNorm).
void rms_norm_rows(const BFloat16* x, const BFloat16* weight, BFloat16* out, int64_t rows, int64_t hidden,
                   float eps) {
  for (int64_t r = 0; r < rows; ++r) {
    const BFloat16* xr = x + r * hidden;
    BFloat16* outr = out + r * hidden;
    float lanes[LANES] = {0};
    int64_t i = 0;
    for (; i + LANES <= hidden; i += LANES)
      for (int j = 0; j < LANES; ++j) {
        float v = f32(xr[i + j]);
        lanes[j] += v * v;
      }
    float sum = 0;
    for (int j = 0; j < LANES; ++j) sum += lanes[j];
    for (; i < hidden; ++i) sum += f32(xr[i]) * f32(xr[i]);
    float inv = 1.0f / std::sqrt(sum / static_cast<float>(hidden) + eps);
    for (int64_t k = 0; k < hidden; ++k) outr[k] = to_bf16(f32(weight[k]) * round_bf16(f32(xr[k]) * inv));
  }
}

Tensor norm(const Tensor& h, const Tensor& weight, double eps) {
  check_bf16(h, "hidden states");
  check_bf16(weight, "norm weight");
  Tensor x = h.contiguous();
  int64_t hidden = x.size(-1);
  Tensor out = at::empty_like(x);
  rms_norm_rows(x.data_ptr<BFloat16>(), weight.contiguous().data_ptr<BFloat16>(), out.data_ptr<BFloat16>(),
                x.numel() / hidden, hidden, static_cast<float>(eps));
  return out;
}

// bf16(bf16(x * cos) + bf16(rotate_half(x) * sin)) for one head of `dim` values, as float.
void rotate(const BFloat16* x, const BFloat16* cos, const BFloat16* sin, float* out, int64_t dim) {
  int64_t half = dim / 2;
  for (int64_t i = 0; i < dim; ++i) {
    float rotated = i < half ? -f32(x[i + half]) : f32(x[i - half]);
    out[i] = round_bf16(round_bf16(f32(x[i]) * f32(cos[i])) + round_bf16(rotated * f32(sin[i])));
  }
}

// Scratch memory of one thread's attention work.
struct AttendScratch {
  std::vector<float> q, key, scores, acc;
  std::vector<BFloat16> q16;
  AttendScratch(int64_t dim, int64_t tokens) : q(dim), key(dim), scores(tokens), acc(dim), q16(dim) {}
};

// scores[t] = q . keys[t] for the `length` cached keys (rows `stride` apart, `dim` bf16 values each);
// q16 is q in bf16 (exact). With AVX-512 BF16 a key is 2 dot-product instructions per 64 values.
void scores_against_cache(const BFloat16* q16, const float* q, const BFloat16* keys, int64_t stride,
                          int64_t length, int64_t dim, float* scores) {
#if defined(__AVX512BF16__)
  if (dim % 32 == 0 && dim <= 256) {
    __m512bh qv[8];
    for (int64_t c = 0; c < dim / 32; ++c) qv[c] = (__m512bh)_mm512_loadu_si512(q16 + 32 * c);
    for (int64_t t = 0; t < length; ++t) {
      const BFloat16* kt = keys + t * stride;
      __m512 acc = _mm512_setzero_ps();
      for (int64_t c = 0; c < dim / 32; ++c)
        acc = _mm512_dpbf16_ps(acc, qv[c], (__m512bh)_mm512_loadu_si512(kt + 32 * c));
      scores[t] = _mm512_reduce_add_ps(acc);
    }
    return;
  }
#endif
  for (int64_t t = 0; t < length; ++t) {
    const BFloat16* kt = keys + t * stride;
    float lanes[LANES] = {0};
    int64_t i = 0;
    for (; i + LANES <= dim; i += LANES)
      for (int j = 0; j < LANES; ++j) lanes[j] += q[i + j] * f32(kt[i + j]);
    float dot = 0;
    for (int j = 0; j < LANES; ++j) dot += lanes[j];
    for (; i < dim; ++i) dot += q[i] * f32(kt[i]);
    scores[t] = dot;
  }
}

// The rows' shared inputs of a decode step's attention.
struct AttendArgs {
  const BFloat16* qkv;  // (rows, (heads + 2 kv_heads) * dim), row stride qkv_stride
  int64_t qkv_stride;
  BFloat16* keys;  // cache buffers (rows, kv_heads, capacity, dim)
  BFloat16* values;
  int64_t s_row, s_head, s_tok;
  int64_t length;  // filled tokens; the step's token goes at `length`
  const BFloat16* cos;  // (rows, dim)
  const BFloat16* sin;
  const bool* keep;  // (rows, length + 1) or null: every token
  int64_t heads, kv_heads, dim;
  float scale;
  BFloat16* out;  // (rows, heads * dim)
};

// Query head `head` of row `r`: its rotated query attends over the row's kept keys (the step's own key
// and value taken from qkv, the cache's for earlier tokens). The first query head of each key/value
// head also writes the step's key and value into the cache (no other item reads them this step).
void attend_item(const AttendArgs& a, int64_t r, int64_t head, AttendScratch& w) {
  const int64_t dim = a.dim, tokens = a.length + 1, group = a.heads / a.kv_heads, g = head / group;
  const BFloat16* row = a.qkv + r * a.qkv_stride;
  const BFloat16* c = a.cos + r * dim;
  const BFloat16* s = a.sin + r * dim;
  const BFloat16* new_value = row + (a.heads + a.kv_heads + g) * dim;
  const bool* kr = a.keep ? a.keep + r * tokens : nullptr;
  BFloat16* kh = a.keys + r * a.s_row + g * a.s_head;
  BFloat16* vh = a.values + r * a.s_row + g * a.s_head;
  rotate(row + head * dim, c, s, w.q.data(), dim);
  rotate(row + (a.heads + g) * dim, c, s, w.key.data(), dim);
  if (head % group == 0)
    for (int64_t i = 0; i < dim; ++i) {
      kh[a.length * a.s_tok + i] = to_bf16(w.key[i]);  // exact: already bf16-rounded
      vh[a.length * a.s_tok + i] = new_value[i];
    }
  const float* q = w.q.data();
  float* scores = w.scores.data();
  for (int64_t i = 0; i < dim; ++i) w.q16[i] = to_bf16(q[i]);  // exact: the rotated query is bf16
  scores_against_cache(w.q16.data(), q, kh, a.s_tok, a.length, dim, scores);
  {
    float dot = 0;
    for (int64_t i = 0; i < dim; ++i) dot += q[i] * w.key[i];
    scores[a.length] = dot;
  }
  // softmax weights, masked keys 0 (loops kept simple and lane-wise so that they vectorise)
  const float lowest = -std::numeric_limits<float>::infinity();
  for (int64_t t = 0; t < tokens; ++t) scores[t] *= a.scale;
  if (kr)
    for (int64_t t = 0; t < tokens; ++t) scores[t] = kr[t] ? scores[t] : lowest;
  float lanes[LANES];
  std::fill(lanes, lanes + LANES, lowest);
  int64_t t = 0;
  for (; t + LANES <= tokens; t += LANES)
    for (int j = 0; j < LANES; ++j) lanes[j] = std::max(lanes[j], scores[t + j]);
  float top = *std::max_element(lanes, lanes + LANES);
  for (; t < tokens; ++t) top = std::max(top, scores[t]);
  for (t = 0; t < tokens; ++t) scores[t] = exp_approx(scores[t] - top);  // exp(-inf): 0
  std::fill(lanes, lanes + LANES, 0.0f);
  for (t = 0; t + LANES <= tokens; t += LANES)
    for (int j = 0; j < LANES; ++j) lanes[j] += scores[t + j];
  float total = 0;
  for (int j = 0; j < LANES; ++j) total += lanes[j];
  for (; t < tokens; ++t) total += scores[t];
  std::fill(w.acc.begin(), w.acc.end(), 0.0f);
  float* acc = w.acc.data();
  for (int64_t t = 0; t < tokens; ++t) {
    float p = scores[t];
    if (p == 0.0f) continue;
    const BFloat16* vt = t == a.length ? new_value : vh + t * a.s_tok;
    for (int64_t i = 0; i < dim; ++i) acc[i] += p * f32(vt[i]);
  }
  BFloat16* o = a.out + r * a.heads * dim + head * dim;
  float inv = 1.0f / total;
  for (int64_t i = 0; i < dim; ++i) o[i] = to_bf16(acc[i] * inv);
}

AttendArgs attend_args(const Tensor& qkv, const Tensor& keys, const Tensor& values, int64_t length,
                       const Tensor& cos, const Tensor& sin, const Tensor& keep, int64_t heads, int64_t kv_heads,
                       double scaling, Tensor& out) {
  check_bf16(qkv, "qkv");
  check_bf16(keys, "key cache");
  check_bf16(values, "value cache");
  check_bf16(cos, "cos");
  check_bf16(sin, "sin");
  int64_t rows = qkv.size(0), dim = keys.size(3);
  TORCH_CHECK(qkv.dim() == 2 && qkv.size(1) == (heads + 2 * kv_heads) * dim, "loopbot decode: qkv shape");
  TORCH_CHECK(keys.dim() == 4 && keys.size(0) == rows && keys.size(1) == kv_heads && keys.size(2) > length,
              "loopbot decode: the key cache has no room for the step");
  TORCH_CHECK(values.sizes() == keys.sizes() && values.strides() == keys.strides(), "loopbot decode: cache");
  TORCH_CHECK(dim % 2 == 0 && heads % kv_heads == 0, "loopbot decode: head shapes");
  TORCH_CHECK(cos.is_contiguous() && sin.is_contiguous() && cos.numel() == rows * dim && sin.numel() == rows * dim,
              "loopbot decode: cos/sin must be contiguous (rows, 1, head_dim)");
  if (keep.defined())
    TORCH_CHECK(keep.scalar_type() == at::kBool && keep.is_contiguous() && keep.size(0) == rows &&
                    keep.size(-1) == length + 1,
                "loopbot decode: the mask must be a contiguous bool (rows, length + 1)");
  out = at::empty({rows, heads * dim}, qkv.options());
  return AttendArgs{qkv.data_ptr<BFloat16>(), qkv.stride(0), keys.data_ptr<BFloat16>(), values.data_ptr<BFloat16>(),
                    keys.stride(0), keys.stride(1), keys.stride(2), length, cos.data_ptr<BFloat16>(),
                    sin.data_ptr<BFloat16>(), keep.defined() ? keep.data_ptr<bool>() : nullptr, heads, kv_heads, dim,
                    static_cast<float>(scaling), out.data_ptr<BFloat16>()};
}

Tensor optional_mask(const std::optional<Tensor>& keep) {
  return keep.has_value() && keep->defined() ? keep->to(at::kBool).contiguous() : Tensor();
}

// One decode step's attention: rows' fused q/k/v projections `qkv` (rows, (heads + 2 kv_heads) * dim)
// get the rotary embedding (cos, sin: (rows, 1, dim)); each row's new key and value are written into
// the cache buffers (rows, kv_heads, capacity, dim) at `length`; each query head attends over the
// row's `length + 1` keys where `keep` (rows, length + 1; none: all) is true. Returns (rows, heads * dim).
Tensor attend(const Tensor& qkv, const Tensor& keys, const Tensor& values, int64_t length, const Tensor& cos,
              const Tensor& sin, const std::optional<Tensor>& keep, int64_t heads, int64_t kv_heads,
              double scaling) {
  Tensor out, mask = optional_mask(keep), input = qkv.contiguous();
  AttendArgs args = attend_args(input, keys, values, length, cos.contiguous(), sin.contiguous(), mask, heads,
                                kv_heads, scaling, out);
  AttendScratch scratch(args.dim, length + 1);
  for (int64_t r = 0; r < input.size(0); ++r)
    for (int64_t head = 0; head < heads; ++head) attend_item(args, r, head, scratch);
  return out;
}

// act_fn(gate) * up with the two halves of the fused gate/up output (rows, 2 * inter): SiLU rounded to
// bf16 as torch's bf16 silu, then the bf16 product.
Tensor silu_mul(const Tensor& gate_up) {
  check_bf16(gate_up, "gate/up");
  Tensor x = gate_up.contiguous();
  int64_t inter = x.size(-1) / 2, rows = x.numel() / x.size(-1);
  auto sizes = x.sizes().vec();
  sizes.back() = inter;
  Tensor out = at::empty(sizes, x.options());
  const BFloat16* in = x.data_ptr<BFloat16>();
  BFloat16* o = out.data_ptr<BFloat16>();
  for (int64_t r = 0; r < rows; ++r) silu_mul_row(in + r * 2 * inter, in + r * 2 * inter + inter, o + r * inter, inter);
  return out;
}

Tensor int4(const Tensor& x, const Tensor& packed, const Tensor& scales, int64_t group_size) {
  return at::_weight_int4pack_mm_for_cpu(x, packed, group_size, scales);
}

// A projection's weights in int4_matmul.h's layout, with torch's int4 scales (in / group, out, 2):
// weight = (q - 8) * scale + zero. `weights` is either the layer's dense weight (out, in), any float
// dtype (the integers recovered as round((w - m) / s): exact, since bf16 rounding moves a weight by
// under half a step), or torch's packing (out, in / 2) uint8, whose integers are read back through
// torch's own kernel (the identity times the weights with scale 1 and zero 8) and laid out the same
// way: in x in x out multiply-adds, seconds for a whole model, so the runtime passes the dense weights
// (a test checks the two agree).
std::vector<Tensor> int4_layout(const Tensor& weights, const Tensor& scales, int64_t group_size) {
  const bool packed = weights.scalar_type() == at::kByte;
  const int64_t out = weights.size(0), in = packed ? weights.size(1) * 2 : weights.size(1);
  TORCH_CHECK(in % group_size == 0 && scales.size(0) == in / group_size && scales.size(1) == out,
              "loopbot int4_layout: weights and scales disagree");
  Tensor s = scales.select(2, 0).to(at::kFloat), m = scales.select(2, 1).to(at::kFloat) - s * 8;
  s = s.contiguous(), m = m.contiguous();
  if (!packed) {
    auto [bytes, params] = int4_matmul::pack_dense(weights.to(at::kFloat).contiguous(), s, m, group_size);
    return {bytes, params};
  }
  Tensor ones = at::ones({in / group_size, out, 1}, scales.options());
  Tensor q = int4(at::eye(in, scales.options()), weights, at::cat({ones, ones * 8}, 2), group_size).t();
  Tensor dense = q.to(at::kFloat) * s.t().repeat_interleave(group_size, 1) + m.t().repeat_interleave(group_size, 1);
  auto [bytes, params] = int4_matmul::pack_dense(dense.contiguous(), s, m, group_size);
  return {bytes, params};
}

// x (rows, in) bf16 quantized into `acts` (Activations: int8, Activations16: int16).
template <typename Acts>
void quantize_rows(const BFloat16* x, int64_t rows, int64_t in, Acts& acts) {
  int4_matmul::quantize(reinterpret_cast<const uint16_t*>(x), rows, in, acts);
}

// out (rows, width) bf16 = the quantized rows times columns [begin, begin + width) of a projection laid
// out by int4_layout.
template <typename Acts>
void integer_columns(const Acts& acts, const Tensor& bytes, const Tensor& params, int64_t begin, Tensor& out) {
  const int64_t width = out.size(1);
  int4_matmul::multiply(acts, bytes.data_ptr<uint8_t>(), params.data_ptr<float>(), begin / int4_matmul::COLS,
                        (begin + width) / int4_matmul::COLS, reinterpret_cast<uint16_t*>(out.data_ptr<BFloat16>()),
                        width);
}

// x (rows, in) bf16 times a projection laid out by int4_layout: (rows, out) bf16, with int8 or int16
// (`bits`) activations.
Tensor int4_mm(const Tensor& x, const Tensor& bytes, const Tensor& params, int64_t bits) {
  check_bf16(x, "input");
  TORCH_CHECK(bits == 8 || bits == 16, "loopbot int4_mm: 8 or 16 bits");
  Tensor input = x.contiguous();
  const int64_t in = input.size(-1), rows = input.numel() / in;
  TORCH_CHECK(bytes.size(1) * int4_matmul::BLOCK == in, "loopbot int4_mm: input features");
  Tensor result = at::empty({rows, bytes.size(0) * int4_matmul::COLS}, input.options());
  auto run = [&](auto acts) {
    quantize_rows(input.data_ptr<BFloat16>(), rows, in, acts);
    integer_columns(acts, bytes, params, 0, result);
  };
  if (bits == 16)
    run(int4_matmul::Activations16{});
  else
    run(int4_matmul::Activations{});
  return result;
}

// ---- A whole decode step over every layer, on one thread or split across several ----------------

// Columns [begin, end) of a projection: its int4-packed rows (a view) and its scales (a copy: the
// kernel reads them contiguous). The int4 packing blocks output features by 64: splits fall on them.
struct Part {
  int64_t begin, end;
  Tensor packed, scales;
};

Part part(const Tensor& packed, const Tensor& scales, int64_t begin, int64_t end) {
  return Part{begin, end, packed.narrow(0, begin, end - begin), scales.narrow(1, begin, end - begin).contiguous()};
}

// [0, n) in `threads` ranges of multiples of 64 (the last takes the rest); fewer when n is small.
std::vector<std::pair<int64_t, int64_t>> ranges(int64_t n, int64_t threads) {
  std::vector<std::pair<int64_t, int64_t>> out;
  int64_t blocks = n / 64, begin = 0;
  for (int64_t t = 0; t < threads && begin < n; ++t) {
    int64_t end = t == threads - 1 ? n : std::min(n, begin + 64 * ((blocks + threads - 1 - t) / (threads - t)));
    blocks -= (end - begin) / 64;
    if (end > begin) out.emplace_back(begin, end);
    begin = end;
  }
  return out;
}

// A projection group's weights laid out by int4_layout.
struct Laid {
  Tensor bytes, params;
};

struct Layer {
  Tensor input_norm, post_norm;
  Tensor qkv_packed, qkv_scales, o_packed, o_scales, gate_up_packed, gate_up_scales, down_packed, down_scales;
  std::vector<Part> qkv, o, down;        // a part per thread
  std::vector<std::pair<Part, Part>> mlp;  // gate and up columns [begin, end) per thread
  Laid qkv_laid, o_laid, gate_up_laid, down_laid;  // for integer activations (set_integer_rows)
};

struct Model {
  std::vector<Layer> layers;
  int64_t heads, kv_heads, head_dim, group_size, threads;
  double eps, scaling;
  std::atomic<int64_t> integer_rows{0}, bits{16};  // see set_integer_rows
};

std::mutex registry_mutex;
std::vector<std::shared_ptr<Model>> registry;

// Registers a model's decoder layers for `decode`: per layer, in this order, the input norm weight,
// the fused q/k/v int4-packed weight and scales, o's, the post-attention norm weight, the fused
// gate/up's and down's (adapters/_fastpath.py _Linears). Returns the handle `decode` takes.
int64_t register_model(const std::vector<Tensor>& tensors, int64_t heads, int64_t kv_heads, int64_t head_dim,
                       int64_t group_size, double eps, double scaling, int64_t threads) {
  constexpr size_t PER_LAYER = 10;
  TORCH_CHECK(!tensors.empty() && tensors.size() % PER_LAYER == 0, "loopbot decode: 10 tensors per layer");
  TORCH_CHECK(threads >= 1 && head_dim <= 256, "loopbot decode: threads >= 1, head_dim <= 256");
  auto model = std::make_shared<Model>();
  model->heads = heads, model->kv_heads = kv_heads, model->head_dim = head_dim, model->group_size = group_size;
  model->threads = threads, model->eps = eps, model->scaling = scaling;
  for (size_t i = 0; i < tensors.size(); i += PER_LAYER) {
    Layer l{tensors[i], tensors[i + 5], tensors[i + 1], tensors[i + 2], tensors[i + 3],
            tensors[i + 4], tensors[i + 6], tensors[i + 7], tensors[i + 8], tensors[i + 9]};
    for (auto [b, e] : ranges(l.qkv_packed.size(0), threads)) l.qkv.push_back(part(l.qkv_packed, l.qkv_scales, b, e));
    for (auto [b, e] : ranges(l.o_packed.size(0), threads)) l.o.push_back(part(l.o_packed, l.o_scales, b, e));
    for (auto [b, e] : ranges(l.down_packed.size(0), threads))
      l.down.push_back(part(l.down_packed, l.down_scales, b, e));
    int64_t inter = l.gate_up_packed.size(0) / 2;
    for (auto [b, e] : ranges(inter, threads))
      l.mlp.emplace_back(part(l.gate_up_packed, l.gate_up_scales, b, e),
                         part(l.gate_up_packed, l.gate_up_scales, inter + b, inter + e));
    model->layers.push_back(std::move(l));
  }
  std::lock_guard<std::mutex> lock(registry_mutex);
  registry.push_back(model);
  return static_cast<int64_t>(registry.size() - 1);
}

std::shared_ptr<Model> registered(int64_t handle) {
  std::lock_guard<std::mutex> lock(registry_mutex);
  TORCH_CHECK(handle >= 0 && handle < static_cast<int64_t>(registry.size()) && registry[handle],
              "loopbot decode: unknown model handle");
  return registry[handle];
}

// Decode steps of up to `rows` rows quantize their activations to `bits` (16: within the bf16 path's
// rounding; 8: faster, coarser) and multiply them with int4_matmul.h; larger steps use torch's int4
// kernel; 0 rows: never. The runtime sets it by measurement (adapters/serving/_decode.py). Returns the
// rows now set (0 until attach_layouts gave the laid-out weights).
int64_t set_integer_rows(int64_t handle, int64_t rows, int64_t bits) {
  TORCH_CHECK(bits == 8 || bits == 16, "loopbot decode: integer activations of 8 or 16 bits");
  auto model = registered(handle);
  bool laid_out = !model->layers.empty() && model->layers[0].qkv_laid.bytes.defined();
  model->bits = bits;
  model->integer_rows = laid_out ? std::max<int64_t>(0, rows) : 0;
  return model->integer_rows;
}

// Each layer's projections laid out by int4_layout, for integer activations: 8 tensors a layer (bytes
// and params of q/k/v, o, gate/up, down), from adapters/serving/_decode.py.
void attach_layouts(int64_t handle, const std::vector<Tensor>& laid) {
  auto model = registered(handle);
  TORCH_CHECK(laid.size() == model->layers.size() * 8, "loopbot attach_layouts: 8 tensors per layer");
  for (size_t i = 0; i < model->layers.size(); ++i) {
    Layer& l = model->layers[i];
    Laid* groups[4] = {&l.qkv_laid, &l.o_laid, &l.gate_up_laid, &l.down_laid};
    const Tensor* packed[4] = {&l.qkv_packed, &l.o_packed, &l.gate_up_packed, &l.down_packed};
    for (int g = 0; g < 4; ++g) {
      const Tensor &bytes = laid[i * 8 + 2 * g], &params = laid[i * 8 + 2 * g + 1];
      TORCH_CHECK(bytes.scalar_type() == at::kByte && params.scalar_type() == at::kFloat && bytes.is_contiguous() &&
                      params.is_contiguous() && bytes.size(0) * int4_matmul::COLS == packed[g]->size(0),
                  "loopbot attach_layouts: a layout that does not fit its projection");
      *groups[g] = Laid{bytes, params};
    }
  }
}

void release_model(int64_t handle) {
  std::lock_guard<std::mutex> lock(registry_mutex);
  if (handle >= 0 && handle < static_cast<int64_t>(registry.size())) registry[handle].reset();
}

inline void relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

// Waits for `deadline_us` spinning, then yields the core between checks (a partner descheduled by a
// busy machine gets it back).
template <typename Done>
void spin_until(Done done) {
  for (int i = 0; !done(); ++i) {
    if (i < 20000)
      relax();
    else
      std::this_thread::yield();
  }
}

// All participants of a step meet here between its phases.
class Barrier {
 public:
  explicit Barrier(int n) : n_(n) {}
  void wait() {
    int generation = generation_.load(std::memory_order_acquire);
    if (arrived_.fetch_add(1, std::memory_order_acq_rel) == n_ - 1) {
      arrived_.store(0, std::memory_order_relaxed);
      generation_.fetch_add(1, std::memory_order_acq_rel);
      return;
    }
    spin_until([&] { return generation_.load(std::memory_order_acquire) != generation; });
  }

 private:
  const int n_;
  std::atomic<int> arrived_{0}, generation_{0};
};

extern "C" void omp_set_num_threads(int);  // torch's OpenMP runtime, already loaded
extern "C" int omp_get_max_threads();

// Helper threads for `decode`: each spins briefly for the next step, then sleeps until woken.
class Pool {
 public:
  static Pool& get() {
    static Pool* pool = new Pool();  // never destroyed: its threads live as long as the process
    return *pool;
  }

  // The pool for one step, or an empty lock when another thread's step holds it (two runtimes in one
  // process): that step then runs on one thread.
  std::unique_lock<std::mutex> claim() { return std::unique_lock<std::mutex>(busy_, std::try_to_lock); }

  // fn(0) on the calling thread, fn(1) ... fn(n - 1) on helpers; returns when every call returned.
  // The caller holds claim()'s lock.
  void run(int n, const std::function<void(int)>& fn) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      while (static_cast<int>(threads_.size()) < n - 1) {
        int index = static_cast<int>(threads_.size()) + 1;
        uint64_t before = epoch_.load(std::memory_order_acquire);  // this run's epoch is the next one
        threads_.emplace_back([this, index, before] { loop(index, before); });
        threads_.back().detach();
      }
      job_ = &fn;
      wanted_ = n - 1;
      remaining_.store(n - 1, std::memory_order_release);
      epoch_.fetch_add(1, std::memory_order_acq_rel);
    }
    wake_.notify_all();
    fn(0);
    spin_until([&] { return remaining_.load(std::memory_order_acquire) == 0; });
  }

 private:
  void loop(int index, uint64_t seen) {
    at::get_num_threads();  // torch's per-thread set-up first, then one thread: a step's work is split here
    omp_set_num_threads(1);
    for (;;) {
      auto started = std::chrono::steady_clock::now();
      while (epoch_.load(std::memory_order_acquire) == seen &&
             std::chrono::steady_clock::now() - started < std::chrono::microseconds(SPIN_US))
        for (int i = 0; i < 64; ++i) relax();
      if (epoch_.load(std::memory_order_acquire) == seen) {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return epoch_.load(std::memory_order_acquire) != seen; });
      }
      seen = epoch_.load(std::memory_order_acquire);
      if (index <= wanted_) {
        (*job_)(index);
        remaining_.fetch_sub(1, std::memory_order_acq_rel);
      }
    }
  }

  static constexpr int SPIN_US = 200;
  std::mutex busy_;  // held by the step using the pool
  std::mutex mutex_;
  std::condition_variable wake_;
  std::vector<std::thread> threads_;
  const std::function<void(int)>* job_ = nullptr;
  int wanted_ = 0;
  std::atomic<int> remaining_{0};
  std::atomic<uint64_t> epoch_{0};
};

// h[:, begin:end] += delta (rows, end - begin), in bf16.
void add_columns(BFloat16* h, int64_t hidden, const Tensor& delta, int64_t begin) {
  const BFloat16* d = delta.data_ptr<BFloat16>();
  int64_t rows = delta.size(0), width = delta.size(1);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < width; ++i) {
      BFloat16& v = h[r * hidden + begin + i];
      v = to_bf16(f32(v) + f32(d[r * width + i]));
    }
}

// out[:, begin:end] = src (rows, end - begin)
void copy_columns(BFloat16* out, int64_t width_out, const Tensor& src, int64_t begin) {
  const BFloat16* s = src.data_ptr<BFloat16>();
  int64_t rows = src.size(0), width = src.size(1);
  for (int64_t r = 0; r < rows; ++r) std::copy(s + r * width, s + (r + 1) * width, out + r * width_out + begin);
}

// The LoRA deltas of one projection group for a step: each row's adapters (`slots`: depth x rows,
// 0 = none) as stacked by adapters/_lora.py LoraBank: A^T (slots, in, r) and (scale * B)^T (slots, r, out),
// in fp32, slot 0 all zeros.
struct Lora {
  const float* a = nullptr;  // null: the group has no delta
  const float* b = nullptr;
  int64_t in = 0, rank = 0, out = 0;
};

// out (rows x width, columns [begin, begin + width) of the group's output) += each row's deltas, added in
// fp32 to the bf16 output and rounded once (as LoraBank adds them); x (rows x in, bf16) is the group's input.
void add_lora(const Lora& lora, const int64_t* slots, int64_t depth, const BFloat16* x, int64_t rows,
              BFloat16* out, int64_t begin, int64_t width, std::vector<float>& u, std::vector<float>& total) {
  if (!lora.a) return;
  u.resize(lora.rank);
  total.resize(width);
  for (int64_t r = 0; r < rows; ++r) {
    bool any = false;
    for (int64_t d = 0; d < depth; ++d) any |= slots[d * rows + r] != 0;
    if (!any) continue;
    for (int64_t k = 0; k < width; ++k) total[k] = f32(out[r * width + k]);
    for (int64_t d = 0; d < depth; ++d) {
      int64_t slot = slots[d * rows + r];
      if (!slot) continue;
      const float* a = lora.a + slot * lora.in * lora.rank;
      const float* b = lora.b + slot * lora.rank * lora.out + begin;
      std::fill(u.begin(), u.end(), 0.0f);
      for (int64_t i = 0; i < lora.in; ++i) {
        float xi = f32(x[r * lora.in + i]);
        for (int64_t j = 0; j < lora.rank; ++j) u[j] += xi * a[i * lora.rank + j];
      }
      for (int64_t j = 0; j < lora.rank; ++j) {
        float uj = u[j];
        const float* bj = b + j * lora.out;
        for (int64_t k = 0; k < width; ++k) total[k] += uj * bj[k];
      }
    }
    for (int64_t k = 0; k < width; ++k) out[r * width + k] = to_bf16(total[k]);
  }
}

// Every decoder layer of a registered model for one decode step: hidden states h (rows, 1, hidden) in,
// new hidden states out; each layer's step key and value written into keys[i] / values[i] (cache
// buffers with room) at `length`. `lora_stacks` (8 a layer: A^T and B^T of q/k/v, o, gate/up, down, or
// none) and `lora_slots` (depth, rows) give each row's LoRA deltas (see Lora). With `threads` > 1 each
// projection's output columns and the attention's query heads are split across threads (helpers that
// spin between the step's phases), the norms computed by each thread for itself.
Tensor decode(const Tensor& h, int64_t handle, const std::vector<Tensor>& keys, const std::vector<Tensor>& values,
              int64_t length, const Tensor& cos, const Tensor& sin, const std::optional<Tensor>& keep,
              int64_t threads, const c10::List<std::optional<Tensor>>& lora_stacks,
              const std::optional<Tensor>& lora_slots) {
  std::shared_ptr<Model> model = registered(handle);
  check_bf16(h, "hidden states");
  const auto& layers = model->layers;
  TORCH_CHECK(keys.size() == layers.size() && values.size() == layers.size(), "loopbot decode: a cache per layer");
  const int64_t hidden = h.size(-1), rows = h.numel() / hidden, dim = model->head_dim;
  const int64_t heads = model->heads, kv = model->kv_heads, qkv_width = (heads + 2 * kv) * dim;
  const int64_t inter = layers[0].gate_up_packed.size(0) / 2;
  int n = static_cast<int>(std::max<int64_t>(1, std::min(threads, model->threads)));
  std::unique_lock<std::mutex> pool;
  if (n > 1 && !(pool = Pool::get().claim()).owns_lock()) n = 1;  // another step holds the helpers
  Tensor x = h.reshape({rows, hidden}).clone();
  Tensor qkv = at::empty({rows, qkv_width}, h.options()), act = at::empty({rows, inter}, h.options());
  Tensor mask = optional_mask(keep), c = cos.contiguous(), s = sin.contiguous();
  std::vector<AttendArgs> args;
  std::vector<Tensor> attended(layers.size());
  for (size_t i = 0; i < layers.size(); ++i)  // every check before any thread starts
    args.push_back(attend_args(qkv, keys[i], values[i], length, c, s, mask, heads, kv, model->scaling, attended[i]));
  // LoRA: per layer and group (q/k/v, o, gate/up, down) A^T and B^T stacks, or none
  std::vector<std::array<Lora, 4>> loras(layers.size());
  std::vector<Tensor> held;  // keeps contiguous copies alive
  Tensor slots_tensor;
  int64_t depth = 0;
  if (lora_slots.has_value() && lora_slots->defined()) {
    slots_tensor = lora_slots->to(at::kLong).contiguous();
    TORCH_CHECK(slots_tensor.dim() == 2 && slots_tensor.size(1) == rows, "loopbot decode: slots (depth, rows)");
    depth = slots_tensor.size(0);
    TORCH_CHECK(lora_stacks.size() == layers.size() * 8, "loopbot decode: 8 LoRA stacks per layer (or none)");
    const int64_t inputs[4] = {hidden, heads * dim, hidden, inter};
    const int64_t outputs[4] = {qkv_width, hidden, 2 * inter, hidden};
    int64_t slot_count = -1;
    for (size_t i = 0; i < layers.size(); ++i)
      for (int g = 0; g < 4; ++g) {
        std::optional<Tensor> a = lora_stacks.get(i * 8 + 2 * g), b = lora_stacks.get(i * 8 + 2 * g + 1);
        if (!a.has_value() || !a->defined()) continue;
        TORCH_CHECK(b.has_value() && b->defined(), "loopbot decode: a LoRA stack without its B");
        Tensor at_ = a->to(at::kFloat).contiguous(), bt = b->to(at::kFloat).contiguous();
        TORCH_CHECK(at_.dim() == 3 && bt.dim() == 3 && at_.size(1) == inputs[g] && bt.size(2) == outputs[g] &&
                        at_.size(2) == bt.size(1) && at_.size(0) == bt.size(0),
                    "loopbot decode: LoRA stack shapes");
        slot_count = at_.size(0);
        held.push_back(at_), held.push_back(bt);
        loras[i][g] = Lora{at_.data_ptr<float>(), bt.data_ptr<float>(), at_.size(1), at_.size(2), bt.size(2)};
      }
    TORCH_CHECK(slot_count < 0 || (slots_tensor.min().item<int64_t>() >= 0 &&
                                   slots_tensor.max().item<int64_t>() < slot_count),
                "loopbot decode: a row's adapter slot is out of range");
  }
  const int64_t* slots = depth ? slots_tensor.data_ptr<int64_t>() : nullptr;
  BFloat16* xp = x.data_ptr<BFloat16>();
  BFloat16* qkvp = qkv.data_ptr<BFloat16>();
  BFloat16* actp = act.data_ptr<BFloat16>();
  const float eps = static_cast<float>(model->eps);
  const int64_t gs = model->group_size;
  const bool integer = rows <= model->integer_rows, int8 = model->bits == 8;
  Barrier barrier(n);
  std::exception_ptr failure;
  std::mutex failure_mutex;
  std::function<void(int)> work = [&](int t) {
    c10::InferenceMode inference;
    AttendScratch scratch(dim, length + 1);
    Tensor normed = at::empty({rows, hidden}, h.options());
    BFloat16* np = normed.data_ptr<BFloat16>();
    std::vector<float> lora_u, lora_total;
    int4_matmul::Activations acts8;
    int4_matmul::Activations16 acts16;
    const void* quantized = nullptr;  // the input the activations hold, within one phase
    // the product of x with a part of a group's columns (`packed` rows from `begin`), plus its rows'
    // LoRA deltas: integer activations x the laid-out weights, or torch's int4 kernel
    auto project = [&](const Tensor& in, const Tensor& packed, const Tensor& scales, const Laid& laid,
                       const Lora& lora, int64_t begin) {
      Tensor out;
      if (integer) {
        if (quantized != in.data_ptr()) {
          if (int8)
            quantize_rows(in.data_ptr<BFloat16>(), rows, in.size(1), acts8);
          else
            quantize_rows(in.data_ptr<BFloat16>(), rows, in.size(1), acts16);
          quantized = in.data_ptr();
        }
        out = at::empty({rows, packed.size(0)}, in.options());
        if (int8)
          integer_columns(acts8, laid.bytes, laid.params, begin, out);
        else
          integer_columns(acts16, laid.bytes, laid.params, begin, out);
      } else {
        out = int4(in, packed, scales, gs);
      }
      add_lora(lora, slots, depth, in.data_ptr<BFloat16>(), rows, out.data_ptr<BFloat16>(), begin, out.size(1),
               lora_u, lora_total);
      return out;
    };
    bool failed = false;
    auto guarded = [&](auto&& phase) {  // a failure is kept, the thread still meets every barrier
      if (failed) return;
      quantized = nullptr;  // buffers are rewritten between phases
      try {
        phase();
      } catch (...) {
        failed = true;
        std::lock_guard<std::mutex> lock(failure_mutex);
        if (!failure) failure = std::current_exception();
      }
    };
    for (size_t i = 0; i < layers.size(); ++i) {
      const Layer& l = layers[i];
      guarded([&] {
        rms_norm_rows(xp, l.input_norm.data_ptr<BFloat16>(), np, rows, hidden, eps);
        if (n == 1) {
          copy_columns(qkvp, qkv_width, project(normed, l.qkv_packed, l.qkv_scales, l.qkv_laid, loras[i][0], 0), 0);
        } else if (t < static_cast<int>(l.qkv.size())) {
          const Part& p = l.qkv[t];
          copy_columns(qkvp, qkv_width, project(normed, p.packed, p.scales, l.qkv_laid, loras[i][0], p.begin), p.begin);
        }
      });
      if (n > 1) barrier.wait();
      guarded([&] {
        for (int64_t item = t; item < rows * heads; item += n) attend_item(args[i], item / heads, item % heads, scratch);
      });
      if (n > 1) barrier.wait();
      guarded([&] {
        if (n == 1)
          add_columns(xp, hidden, project(attended[i], l.o_packed, l.o_scales, l.o_laid, loras[i][1], 0), 0);
        else if (t < static_cast<int>(l.o.size()))
          add_columns(xp, hidden, project(attended[i], l.o[t].packed, l.o[t].scales, l.o_laid, loras[i][1], l.o[t].begin),
                      l.o[t].begin);
      });
      if (n > 1) barrier.wait();
      guarded([&] {
        rms_norm_rows(xp, l.post_norm.data_ptr<BFloat16>(), np, rows, hidden, eps);
        Tensor first, second;  // the projected gate and up columns (one tensor on one thread)
        const BFloat16 *gate, *up;
        int64_t width, stride, begin = 0;
        if (n == 1) {
          first = project(normed, l.gate_up_packed, l.gate_up_scales, l.gate_up_laid, loras[i][2], 0);
          gate = first.data_ptr<BFloat16>(), up = gate + inter, width = inter, stride = 2 * inter;
        } else if (t < static_cast<int>(l.mlp.size())) {
          const auto& [g, u] = l.mlp[t];
          first = project(normed, g.packed, g.scales, l.gate_up_laid, loras[i][2], g.begin);
          second = project(normed, u.packed, u.scales, l.gate_up_laid, loras[i][2], u.begin);
          gate = first.data_ptr<BFloat16>(), up = second.data_ptr<BFloat16>();
          width = stride = first.size(1), begin = g.begin;
        } else {
          return;
        }
        for (int64_t r = 0; r < rows; ++r)
          silu_mul_row(gate + r * stride, up + r * stride, actp + r * inter + begin, width);
      });
      if (n > 1) barrier.wait();
      guarded([&] {
        if (n == 1)
          add_columns(xp, hidden, project(act, l.down_packed, l.down_scales, l.down_laid, loras[i][3], 0), 0);
        else if (t < static_cast<int>(l.down.size()))
          add_columns(xp, hidden, project(act, l.down[t].packed, l.down[t].scales, l.down_laid, loras[i][3], l.down[t].begin),
                      l.down[t].begin);
      });
      if (n > 1) barrier.wait();
    }
  };
  if (n == 1) {
    work(0);
  } else {  // the calling thread's kernels on one thread too: the step is split here
    int before = omp_get_max_threads();
    omp_set_num_threads(1);
    Pool::get().run(n, work);
    omp_set_num_threads(before);
  }
  if (failure) std::rethrow_exception(failure);
  return x.view(h.sizes());
}

}  // namespace

TORCH_LIBRARY(loopbot, m) {
  m.def("norm(Tensor h, Tensor weight, float eps) -> Tensor", norm);
  m.def(
      "attend(Tensor qkv, Tensor(a!) keys, Tensor(b!) values, int length, Tensor cos, Tensor sin, Tensor? keep, "
      "int heads, int kv_heads, float scaling) -> Tensor",
      attend);
  m.def("silu_mul(Tensor gate_up) -> Tensor", silu_mul);
  m.def(
      "register_model(Tensor[] tensors, int heads, int kv_heads, int head_dim, int group_size, float eps, "
      "float scaling, int threads) -> int",
      register_model);
  m.def("release_model(int handle) -> ()", release_model);
  m.def("int4_layout(Tensor weights, Tensor scales, int group_size) -> Tensor[]", int4_layout);
  m.def("attach_layouts(int handle, Tensor[] laid) -> ()", attach_layouts);
  m.def("int4_mm(Tensor x, Tensor bytes, Tensor params, int bits=16) -> Tensor", int4_mm);
  m.def("set_integer_rows(int handle, int rows, int bits=16) -> int", set_integer_rows);
  m.def(
      "decode(Tensor h, int handle, Tensor(a!)[] keys, Tensor(b!)[] values, int length, Tensor cos, Tensor sin, "
      "Tensor? keep, int threads, Tensor?[] lora_stacks, Tensor? lora_slots) -> Tensor",
      decode);
}
