// Integer activations x int4 weights for decode steps of a few rows (included by decode.cpp).
//
// torch's CPU int4 kernel (aten::_weight_int4pack_mm_for_cpu) converts every weight to float and
// multiplies in fp32. Without AVX-512 that is ~12 GFLOP/s for one row and ~33 from 4 rows on a Zen 3
// core: a one-row decode step of the default model spent ~17 ms in it. Here each row is quantized per
// 32 input features (a scale per block) and the weights stay 4-bit integers:
// - int16 activations (Activations16, what decode steps use): vpmaddwd, 16 multiply-adds per
//   instruction; within ~1/65534 of each block's largest value, finer than bf16's own rounding, so the
//   outputs are the bf16 path's to rounding. 2.4x torch's kernel at one row, 1.5x at 4-16 (Zen 3).
// - int8 activations (Activations, as llama.cpp's q8_0): vpmaddubsw, 32 per instruction, 4.3x at one
//   row and 2.2x at 4-16, but each matmul's output moves ~1 % and the divergence from the fp32 model
//   grows (bench/quantization_quality.py); kept for measurement.
// A plain loop does the same arithmetic where AVX2 is missing.
//
// Weights, per block of 8 output features (columns) and 32 input features: 128 bytes. Byte
// 32 p + 4 c + i (pair p 0..3, column c 0..7, i 0..3) holds the weight of input 32 g + 8 p + i in its
// low nibble and of input 32 g + 8 p + 4 + i in its high one, so one 32-byte load gives, per column
// lane, 4 consecutive inputs of two quads, and a row's activations broadcast to every lane multiply all
// 8 columns at once. Parameters per block: the 8 columns' scales s, then their offsets m (fp32):
// weight = s * q + m, q in 0..15 (GPTQ's asymmetric zero points folded into m). Then
//   x . w = sum over blocks of s * d * (q . a) + m * sum(x)
// with a = round(x / d), d = max|x| / 127 (or 32767): the offsets' term takes the block's exact sum of x.
#pragma once

#include <ATen/ATen.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace int4_matmul {

constexpr int64_t BLOCK = 32;  // input features per activation scale and per weight block
constexpr int64_t COLS = 8;    // output features per weight block

// bf16 <-> float on the raw bits, branch-free, so that loops over them vectorise (decode.cpp uses them too).
inline float from_bits(uint16_t b) {
  uint32_t u = static_cast<uint32_t>(b) << 16;
  float out;
  std::memcpy(&out, &u, sizeof(out));
  return out;
}
// v rounded to the nearest bf16, ties to even, NaN kept NaN (as torch rounds)
inline uint16_t to_bits(float v) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof(u));
  uint16_t rounded = static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
  return (u & 0x7FFFFFFFu) > 0x7F800000u ? uint16_t{0x7FC0} : rounded;
}

// The quantized rows of one call: a (rows x in) integers of `Int` (|a| <= Limit), and per row and block
// d = max|x| / Limit and sum(x). Within each quad of inputs k..k+3, input k + i is stored at k + ORDER[i]:
// int8 as they come, int16 as vpmaddwd's pairs (k, k + 2), (k + 1, k + 3).
template <typename Int, int Limit, bool Paired>
struct Quantized {
  using Value = Int;
  static constexpr float LIMIT = static_cast<float>(Limit);
  static constexpr int ORDER[4] = {0, Paired ? 2 : 1, Paired ? 1 : 2, 3};
  std::vector<Int> a;
  std::vector<float> d, sum;
  int64_t rows = 0, in = 0;
};
using Activations = Quantized<int8_t, 127, false>;
// int16 activations: within ~1/65534 of each block's largest value, finer than bf16's own rounding;
// vpmaddwd does 16 multiply-adds per instruction, half int8's speed from several rows, but the
// products are those of the bf16 path to within fp32 rounding.
using Activations16 = Quantized<int16_t, 32767, true>;

// Quantizes `rows` bf16 rows of `in` features (a multiple of BLOCK).
template <typename Acts>
inline void quantize(const uint16_t* x, int64_t rows, int64_t in, Acts& out) {
  const int64_t blocks = in / BLOCK;
  out.rows = rows, out.in = in;
  out.a.resize(rows * in);
  out.d.resize(rows * blocks);
  out.sum.resize(rows * blocks);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t b = 0; b < blocks; ++b) {
      float v[BLOCK];
      float amax = 0.0f, total = 0.0f;
      for (int64_t i = 0; i < BLOCK; ++i) {
        v[i] = from_bits(x[r * in + b * BLOCK + i]);
        amax = std::max(amax, std::fabs(v[i]));
        total += v[i];
      }
      const float inv = amax > 0.0f ? Acts::LIMIT / amax : 0.0f;
      typename Acts::Value* a = out.a.data() + r * in + b * BLOCK;
      for (int64_t i = 0; i < BLOCK; ++i)
        a[(i & ~3) + Acts::ORDER[i & 3]] = static_cast<typename Acts::Value>(std::nearbyint(v[i] * inv));
      out.d[r * blocks + b] = amax / Acts::LIMIT;
      out.sum[r * blocks + b] = total;
    }
}

// Row r's 8 columns of weight block j, rounded to bf16, into out (row stride `width`, block `first` at 0).
inline void store(const float* values, uint16_t* out, int64_t r, int64_t j, int64_t first, int64_t width) {
  for (int64_t c = 0; c < COLS; ++c) out[r * width + COLS * (j - first) + c] = to_bits(values[c]);
}

// The arithmetic of multiply in plain loops (where AVX2 is missing).
template <typename Acts>
inline void multiply_plain(const Acts& x, const uint8_t* weights, const float* params, int64_t first, int64_t last,
                           uint16_t* out, int64_t width) {
  const int64_t in = x.in, blocks = in / BLOCK;
  for (int64_t j = first; j < last; ++j)
    for (int64_t r = 0; r < x.rows; ++r) {
      float values[COLS] = {0};
      for (int64_t g = 0; g < blocks; ++g) {
        const uint8_t* wp = weights + (j * blocks + g) * BLOCK * COLS / 2;
        const float* pp = params + (j * blocks + g) * 2 * COLS;
        const typename Acts::Value* a = x.a.data() + r * in + g * BLOCK;
        for (int64_t c = 0; c < COLS; ++c) {
          int64_t dot = 0;
          for (int p = 0; p < 4; ++p)
            for (int i = 0; i < 4; ++i) {
              uint8_t byte = wp[32 * p + 4 * c + i];
              dot += (byte & 0x0F) * a[8 * p + Acts::ORDER[i]] + (byte >> 4) * a[8 * p + 4 + Acts::ORDER[i]];
            }
          values[c] += static_cast<float>(dot) * (pp[c] * x.d[r * blocks + g]) + pp[COLS + c] * x.sum[r * blocks + g];
        }
      }
      store(values, out, r, j, first, width);
    }
}

// out (rows x width, bf16 bits, row stride `width`) = x . w for the weight blocks [first, last) of
// columns (8 each): out column 8 (j - first) + c is column 8 j + c of the layer.
inline void multiply(const Activations& x, const uint8_t* weights, const float* params, int64_t first,
                     int64_t last, uint16_t* out, int64_t width) {
#if defined(__AVX2__) && defined(__FMA__)
  const int64_t in = x.in, blocks = in / BLOCK;
  constexpr int64_t TILE = 4;  // rows sharing one unpacking of the weights
  const __m256i low = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
  for (int64_t j = first; j < last; ++j)
    for (int64_t r0 = 0; r0 < x.rows; r0 += TILE) {
      const int64_t tile = std::min(TILE, x.rows - r0);
      __m256 acc[TILE] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
      for (int64_t g = 0; g < blocks; ++g) {
        const uint8_t* wp = weights + (j * blocks + g) * BLOCK * COLS / 2;
        __m256i w[8];
        for (int p = 0; p < 4; ++p) {
          __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp + 32 * p));
          w[2 * p] = _mm256_and_si256(v, low);
          w[2 * p + 1] = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
        }
        const float* pp = params + (j * blocks + g) * 2 * COLS;
        const __m256 s = _mm256_loadu_ps(pp), m = _mm256_loadu_ps(pp + COLS);
        for (int64_t t = 0; t < tile; ++t) {
          const int64_t r = r0 + t;
          const int8_t* a = x.a.data() + r * in + g * BLOCK;
          int32_t quads[8];
          std::memcpy(quads, a, sizeof(quads));
          __m256i dot = _mm256_maddubs_epi16(w[0], _mm256_set1_epi32(quads[0]));
          for (int q = 1; q < 8; ++q)  // 8 x 2 x 15 x 127 fits in int16
            dot = _mm256_add_epi16(dot, _mm256_maddubs_epi16(w[q], _mm256_set1_epi32(quads[q])));
          const __m256 products = _mm256_cvtepi32_ps(_mm256_madd_epi16(dot, ones));
          acc[t] = _mm256_fmadd_ps(products, _mm256_mul_ps(s, _mm256_set1_ps(x.d[r * blocks + g])), acc[t]);
          acc[t] = _mm256_fmadd_ps(m, _mm256_set1_ps(x.sum[r * blocks + g]), acc[t]);
        }
      }
      for (int64_t t = 0; t < tile; ++t) {
        float values[COLS];
        _mm256_storeu_ps(values, acc[t]);
        store(values, out, r0 + t, j, first, width);
      }
    }
#else
  multiply_plain(x, weights, params, first, last, out, width);
#endif
}

inline void multiply(const Activations16& x, const uint8_t* weights, const float* params, int64_t first,
                     int64_t last, uint16_t* out, int64_t width) {
#if defined(__AVX2__) && defined(__FMA__)
  const int64_t in = x.in, blocks = in / BLOCK;
  constexpr int64_t TILE = 4;
  const __m256i mask = _mm256_set1_epi32(0x000F000F);
  for (int64_t j = first; j < last; ++j)
    for (int64_t r0 = 0; r0 < x.rows; r0 += TILE) {
      const int64_t tile = std::min(TILE, x.rows - r0);
      __m256 acc[TILE] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
      for (int64_t g = 0; g < blocks; ++g) {
        const uint8_t* wp = weights + (j * blocks + g) * BLOCK * COLS / 2;
        __m256i dot[TILE] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(),
                             _mm256_setzero_si256()};
        for (int p = 0; p < 4; ++p) {
          const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp + 32 * p));
          // per column lane, int16 pairs of inputs (i, i + 2): (0, 2) low nibbles, (0, 2) high ones
          // (the quad 4 further), (1, 3) low, (1, 3) high
          const __m256i w0 = _mm256_and_si256(v, mask), w1 = _mm256_and_si256(_mm256_srli_epi32(v, 4), mask);
          const __m256i w2 = _mm256_and_si256(_mm256_srli_epi32(v, 8), mask);
          const __m256i w3 = _mm256_and_si256(_mm256_srli_epi32(v, 12), mask);
          for (int64_t t = 0; t < tile; ++t) {
            const int16_t* a = x.a.data() + (r0 + t) * in + g * BLOCK + 8 * p;
            int32_t pairs[4];  // (a0, a2), (a1, a3) of the quad at 8 p, then of the one at 8 p + 4
            std::memcpy(pairs, a, sizeof(pairs));
            __m256i sum = _mm256_add_epi32(_mm256_madd_epi16(w0, _mm256_set1_epi32(pairs[0])),
                                           _mm256_madd_epi16(w2, _mm256_set1_epi32(pairs[1])));
            sum = _mm256_add_epi32(sum, _mm256_madd_epi16(w1, _mm256_set1_epi32(pairs[2])));
            sum = _mm256_add_epi32(sum, _mm256_madd_epi16(w3, _mm256_set1_epi32(pairs[3])));
            dot[t] = _mm256_add_epi32(dot[t], sum);
          }
        }
        const float* pp = params + (j * blocks + g) * 2 * COLS;
        const __m256 s = _mm256_loadu_ps(pp), m = _mm256_loadu_ps(pp + COLS);
        for (int64_t t = 0; t < tile; ++t) {
          const int64_t r = r0 + t;
          acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot[t]), _mm256_mul_ps(s, _mm256_set1_ps(x.d[r * blocks + g])), acc[t]);
          acc[t] = _mm256_fmadd_ps(m, _mm256_set1_ps(x.sum[r * blocks + g]), acc[t]);
        }
      }
      for (int64_t t = 0; t < tile; ++t) {
        float values[COLS];
        _mm256_storeu_ps(values, acc[t]);
        store(values, out, r0 + t, j, first, width);
      }
    }
#else
  multiply_plain(x, weights, params, first, last, out, width);
#endif
}

// The layout above straight from a layer's dense weight w (out x in, fp32), scales s and offsets m
// ((in / group) x out, fp32; w = s * q + m up to the dense copy's rounding, which moves a weight by
// under half a step): q = round((w - m) / s), packed as it is recovered.
inline std::pair<at::Tensor, at::Tensor> pack_dense(const at::Tensor& w, const at::Tensor& s, const at::Tensor& m,
                                                    int64_t group) {
  const int64_t out = w.size(0), in = w.size(1), blocks = in / BLOCK;
  TORCH_CHECK(out % COLS == 0 && in % BLOCK == 0 && group % BLOCK == 0, "loopbot int8 x int4: shapes");
  at::Tensor bytes = at::empty({out / COLS, blocks, BLOCK * COLS / 2}, at::kByte);
  at::Tensor params = at::empty({out / COLS, blocks, 2 * COLS}, at::kFloat);
  const float *wp = w.data_ptr<float>(), *sp = s.data_ptr<float>(), *mp = m.data_ptr<float>();
  uint8_t* bp = bytes.data_ptr<uint8_t>();
  float* pp = params.data_ptr<float>();
  auto level = [](float v, float offset, float inverse) {
    return static_cast<uint8_t>(std::min(15.0f, std::max(0.0f, std::nearbyint((v - offset) * inverse))));
  };
  for (int64_t j = 0; j < out / COLS; ++j)
    for (int64_t g = 0; g < blocks; ++g) {
      uint8_t* block = bp + (j * blocks + g) * BLOCK * COLS / 2;
      float* block_params = pp + (j * blocks + g) * 2 * COLS;
      for (int64_t c = 0; c < COLS; ++c) {
        const int64_t n = COLS * j + c, at_group = (BLOCK * g / group) * out + n;
        const float scale = sp[at_group], offset = mp[at_group], inverse = scale != 0.0f ? 1.0f / scale : 0.0f;
        block_params[c] = scale, block_params[COLS + c] = offset;
        const float* row = wp + n * in + BLOCK * g;
        for (int p = 0; p < 4; ++p)
          for (int i = 0; i < 4; ++i)
            block[32 * p + 4 * c + i] = static_cast<uint8_t>(level(row[8 * p + i], offset, inverse) |
                                                             (level(row[8 * p + 4 + i], offset, inverse) << 4));
      }
    }
  return {bytes, params};
}

}  // namespace int4_matmul
