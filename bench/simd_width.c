/* How much of the browser's gap is the instruction set: two kernels of the shape the
 * browser engines spend their time in, one source compiled by one compiler (clang) for
 * x86-64 at three SIMD widths and for WebAssembly SIMD (128-bit), timed on the same core.
 * Driven by bench/simd_width.py (builds, runs natively and in Chromium, prints JSON).
 *
 * - sgemm: C += A.B in float32 with a register-blocked 4 x (2 vectors) micro-kernel written
 *   with clang's vector extension, VW floats a vector (4 = 128-bit: SSE4.2 or wasm simd128;
 *   8 = AVX2; 16 = AVX-512). `a * b + c` becomes an FMA where the target has one (AVX2,
 *   AVX-512; not SSE4.2, not wasm SIMD without relaxed-simd). The shape onnxruntime's conv
 *   (im2col + SGEMM) and MatMul take in waifu2x and MiniLM.
 * - q4_1 dot: llama.cpp's Q4_1 x Q8_1 block dot product (the subnet's GGUF is Q4_1), a
 *   matrix-vector product the size of SmolLM2's ffn_down. `q41_generic` is the portable C
 *   loop (ggml's *_generic path, which its wasm build uses for Q4_1: there is no wasm SIMD
 *   kernel for that type), left to the compiler's auto-vectorizer; `q41_simd128` is the
 *   same sum written with wasm SIMD intrinsics the way ggml writes its Q5_1 kernel (what a
 *   Q4_1 kernel there would look like). Integer sums are exact, so both give the same
 *   result bit for bit.
 * No libc in the wasm build: buffers are static, the driver fills them through exports. */
#include <stdint.h>
#ifdef __wasm_simd128__
#include <wasm_simd128.h>
#endif

#ifndef VW
#define VW 4
#endif
typedef float vf __attribute__((vector_size(VW * 4)));

#define GM 192
#define GN 192
#define GK 192
static float A[GM * GK], B[GK * GN], C[GM * GN];

/* a * b + c: fused where the target fuses (clang contracts it on AVX2/AVX-512); with
 * RELAXED, wasm's relaxed-simd f32x4 madd (fused or not, as the engine's CPU has it). */
#if defined(RELAXED) && defined(__wasm_relaxed_simd__) && __has_builtin(__builtin_wasm_relaxed_madd_f32x4)
#define MADD(a, b, c) __builtin_wasm_relaxed_madd_f32x4((a), (b), (c))
#elif defined(RELAXED) && defined(__wasm_relaxed_simd__)
/* clang 14 (Debian 12) has only the pre-standard builtin, encoded 0xfd 0xaf 0x01;
 * bench/simd_width.py rewrites that to the standard f32x4.relaxed_madd (0xfd 0x85 0x02,
 * a * b + c with the operands in this order). */
#define MADD(a, b, c) __builtin_wasm_fma_f32x4((a), (b), (c))
#else
#define MADD(a, b, c) ((a) * (b) + (c))
#endif
static inline vf vload(const float *p) { vf v; __builtin_memcpy(&v, p, sizeof v); return v; }
static inline void vstore(float *p, vf v) { __builtin_memcpy(p, &v, sizeof v); }

void sgemm(void) {
  for (int i = 0; i < GM; i += 4) {
    for (int j = 0; j < GN; j += 2 * VW) {
      vf acc[4][2];
      for (int r = 0; r < 4; r++) { acc[r][0] = vload(&C[(i + r) * GN + j]); acc[r][1] = vload(&C[(i + r) * GN + j + VW]); }
      for (int k = 0; k < GK; k++) {
        const vf b0 = vload(&B[k * GN + j]), b1 = vload(&B[k * GN + j + VW]);
        for (int r = 0; r < 4; r++) {
          const vf a = (vf){} + A[(i + r) * GK + k];
          acc[r][0] = MADD(a, b0, acc[r][0]);
          acc[r][1] = MADD(a, b1, acc[r][1]);
        }
      }
      for (int r = 0; r < 4; r++) { vstore(&C[(i + r) * GN + j], acc[r][0]); vstore(&C[(i + r) * GN + j + VW], acc[r][1]); }
    }
  }
}

/* Q4_1: per 32 weights an f16 scale d and min m, 16 bytes of nibbles (low nibbles are
 * weights 0-15, high 16-31). Q8_1: f16 scale d, f16 s = d * sum(q), 32 int8. Scales are
 * kept as float here (the f16 conversion is not what is measured). */
#define QROWS 1536
#define QCOLS 576
#define QB (QCOLS / 32)
typedef struct { float d, m; uint8_t qs[16]; } block_q4_1;
typedef struct { float d, s; int8_t qs[32]; } block_q8_1;
static block_q4_1 W[QROWS * QB];
static block_q8_1 X[QB];
static float Y[QROWS];

static float dot_generic(const block_q4_1 *x, const block_q8_1 *y) {
  float sumf = 0;
  for (int ib = 0; ib < QB; ib++) {
    int sumi0 = 0, sumi1 = 0;
    for (int j = 0; j < 16; j++) {
      sumi0 += (x[ib].qs[j] & 0x0F) * y[ib].qs[j];
      sumi1 += (x[ib].qs[j] >> 4) * y[ib].qs[j + 16];
    }
    sumf += (float)(sumi0 + sumi1) * x[ib].d * y[ib].d + x[ib].m * y[ib].s;
  }
  return sumf;
}

void q41_generic(void) {
  for (int r = 0; r < QROWS; r++) Y[r] = dot_generic(&W[r * QB], X);
}

#ifdef __wasm_simd128__
static float dot_simd128(const block_q4_1 *x, const block_q8_1 *y) {
  v128_t sumv = wasm_f32x4_splat(0.0f);
  float summs = 0;
  const v128_t m4b = wasm_i8x16_splat(0x0F);
  for (int ib = 0; ib < QB; ib++) {
    summs += x[ib].m * y[ib].s;
    const v128_t v0 = wasm_v128_load(x[ib].qs);
    const v128_t lo = wasm_v128_and(v0, m4b), hi = wasm_u8x16_shr(v0, 4);
    const v128_t yl = wasm_v128_load(y[ib].qs), yh = wasm_v128_load(y[ib].qs + 16);
    const v128_t dot = wasm_i32x4_add(
        wasm_i32x4_add(wasm_i32x4_dot_i16x8(wasm_u16x8_extend_low_u8x16(lo), wasm_i16x8_extend_low_i8x16(yl)),
                       wasm_i32x4_dot_i16x8(wasm_u16x8_extend_high_u8x16(lo), wasm_i16x8_extend_high_i8x16(yl))),
        wasm_i32x4_add(wasm_i32x4_dot_i16x8(wasm_u16x8_extend_low_u8x16(hi), wasm_i16x8_extend_low_i8x16(yh)),
                       wasm_i32x4_dot_i16x8(wasm_u16x8_extend_high_u8x16(hi), wasm_i16x8_extend_high_i8x16(yh))));
    sumv = wasm_f32x4_add(sumv, wasm_f32x4_mul(wasm_f32x4_convert_i32x4(dot), wasm_f32x4_splat(x[ib].d * y[ib].d)));
  }
  return wasm_f32x4_extract_lane(sumv, 0) + wasm_f32x4_extract_lane(sumv, 1) + wasm_f32x4_extract_lane(sumv, 2) +
         wasm_f32x4_extract_lane(sumv, 3) + summs;
}

void q41_simd128(void) {
  for (int r = 0; r < QROWS; r++) Y[r] = dot_simd128(&W[r * QB], X);
}
#endif

void reset_c(void) { for (int i = 0; i < GM * GN; i++) C[i] = 0; }

/* Deterministic inputs (an LCG), the same in every build. */
void fill(void) {
  uint32_t s = 12345;
#define NEXT() (s = s * 1664525u + 1013904223u, s >> 8)
  for (int i = 0; i < GM * GK; i++) A[i] = (float)(NEXT() % 2001) / 1000.0f - 1.0f;
  for (int i = 0; i < GK * GN; i++) B[i] = (float)(NEXT() % 2001) / 1000.0f - 1.0f;
  reset_c();
  for (int i = 0; i < QROWS * QB; i++) {
    W[i].d = (float)(NEXT() % 100 + 1) / 4096.0f;
    W[i].m = -(float)(NEXT() % 100) / 512.0f;
    for (int j = 0; j < 16; j++) W[i].qs[j] = (uint8_t)NEXT();
  }
  for (int i = 0; i < QB; i++) {
    int sum = 0;
    X[i].d = (float)(NEXT() % 100 + 1) / 2048.0f;
    for (int j = 0; j < 32; j++) { X[i].qs[j] = (int8_t)(NEXT() % 255 - 127); sum += X[i].qs[j]; }
    X[i].s = X[i].d * (float)sum;
  }
}

/* A checksum of the outputs, so the driver can tell that every build computed the same. */
float checksum_c(void) { float s = 0; for (int i = 0; i < GM * GN; i++) s += C[i]; return s; }
float checksum_y(void) { float s = 0; for (int i = 0; i < QROWS; i++) s += Y[i]; return s; }
int sgemm_flops(void) { return 2 * GM * GN * GK; }
int q41_weights(void) { return QROWS * QCOLS; }

#ifndef __wasm__
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
/* Best of `rounds` timings of `reps` calls: the least disturbed by a shared machine. */
static double best(void (*f)(void), int reps, int rounds) {
  double b = 1e9;
  for (int r = 0; r < rounds; r++) {
    double t0 = now();
    for (int i = 0; i < reps; i++) f();
    double t = (now() - t0) / reps;
    if (t < b) b = t;
  }
  return b;
}
int main(int argc, char **argv) {
  int rounds = argc > 1 ? atoi(argv[1]) : 15;
  fill();
  sgemm(); q41_generic();
  double sg = best(sgemm, 20, rounds), q = best(q41_generic, 50, rounds);
  reset_c(); sgemm();
  printf("{\"sgemm_gflops\": %.2f, \"q41_generic_gweights_per_s\": %.3f, \"checksum_sgemm\": %.9g, \"checksum_q41\": %.9g}\n",
         sgemm_flops() / sg / 1e9, q41_weights() / q / 1e9, checksum_c(), (q41_generic(), checksum_y()));
  return 0;
}
#endif
