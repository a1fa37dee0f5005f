// FlashAttention-3-style forward self-attention for Hopper (sm_90a only), head dim 72, bf16 in and out with f32
// accumulation, no mask (queries = keys = n tokens), the softmax scale folded into exp2. Launched by
// kernels/src/fa3.rs; the exploration it comes from (other tile sizes and schedules, probes, a standalone test
// and benchmark; this kernel is its variant fa3_j_bn128_v72_nc3) is kept outside the repository.
//
// Layout: q, k, v are [B, N, H, 72] views (last axis contiguous, 16-byte aligned rows), read through six 4-D TMA
// tensor maps {72, H, N, B} built on the host; o is written directly with element strides [batch, head, row].
//
// A Q or K tile of `rows` tokens x 80 columns (72 + 8 zero columns) is two shared-memory panels, each 1024-byte
// aligned:
//   panel A: rows x 128 B = columns 0..63, 128-byte swizzle (16-byte chunk index ^= row % 8)
//   panel B: rows x  32 B = columns 64..79, 32-byte swizzle; columns 72..79 and tokens >= n are TMA zero fill.
// A V tile is two panels of the panel-A kind: columns 0..63 and columns 64..127 (72..127 and tokens >= n zero
// fill). These are what TMA writes with CU_TENSOR_MAP_SWIZZLE_128B / _32B and boxes {64,1,rows,1} /
// {16,1,rows,1}, and the canonical wgmma layouts:
//   S = Q K^T : K-major operands; 4 k-steps on panel A (start + 32 B each), 1 k-step on panel B.
//   O += P V  : P from registers (the S accumulator packed to bf16), V MN-major; per 16 keys one m64n72k16
//               (N = the head dim) over both V panels: +2048 B per step, the second 64-column atom one panel
//               (LBO) further, of which the wgmma reads only columns 64..71.
//
// One CTA = 192 query rows, 512 threads: warpgroup 0 is the TMA producer (one thread, setmaxnreg 24), warpgroups
// 1 to 3 are consumers (setmaxnreg 160) with 64 rows each. K and V tiles of 128 keys go through a 2-stage ring
// with full/empty mbarriers; key tiles are walked in reverse so that the only partial tile comes first. Each
// consumer runs S = Q K^T, waits, the softmax, O += P V, waits, per tile: no overlap of the two GEMMs inside a
// warpgroup and no ping-pong between the consumers (the three consumers' GEMMs and softmaxes interleave on their
// own). S and P are then never live together, which is what fits 160 registers; with either schedule ptxas
// spills. Three consumers share each K/V tile, a third less K/V traffic per query row than two.
#include <cuda_bf16.h>
#include <stdint.h>

namespace fa3 {

constexpr int NC = 3;        // consumer warpgroups
constexpr int BM = 64 * NC;  // query rows per CTA (192: 64 per consumer)
constexpr int BN = 128;      // keys per K/V tile
constexpr int ST = 2;        // K/V ring stages

// Shared-memory plan (byte offsets from the 1024-aligned base). The host requests SMEM (SMEM_BYTES in fa3.rs).
constexpr int round_up(int x, int m) { return (x + m - 1) / m * m; }
constexpr int Q_A = 0;
constexpr int Q_B = BM * 128;
constexpr int Q_END = round_up(Q_B + BM * 32, 1024);
constexpr int PANEL_A = BN * 128;
constexpr int PANEL_B = round_up(BN * 32, 1024);
constexpr int K_TILE = PANEL_A + PANEL_B;     // panel A + panel B
constexpr int V_TILE = 2 * PANEL_A;           // two 128-byte-row panels
constexpr int STAGE = K_TILE + V_TILE;
constexpr int KV0 = Q_END;                    // stage s: K at KV0 + s*STAGE, V at + K_TILE
constexpr int BAR = KV0 + ST * STAGE;         // mbarriers: Q, then full K, empty K, full V, empty V per stage
constexpr int SMEM = BAR + 8 * (1 + 4 * ST) + 1024;  // + slack to align the base to 1024
constexpr unsigned TX_Q = BM * 160;           // bytes of one Q tile (both panels, zero fill included)
constexpr unsigned TX_K = BN * 160;
constexpr unsigned TX_V = BN * 256;

// A CUtensorMap (128 bytes, 64-byte aligned) without including cuda.h.
struct alignas(64) TmaMap {
  unsigned long long w[16];
};
// Q, K: panel A (box {64,1,rows,1}, 128B swizzle) and panel B (box {16,1,rows,1}, 32B swizzle, from column 64).
// V: two boxes {64,1,BN,1} in 128B swizzle, from columns 0 and 64. Q boxes have BM rows, K and V boxes BN rows.
struct TmaMaps {
  TmaMap qa, qb, ka, kb, va, vb;
};

struct Params {
  __nv_bfloat16 *o;
  long long ob, oh, orow;  // output element strides [batch, head, row]
  int n;                   // tokens (queries and keys)
  float scale_log2;        // softmax scale * log2(e)
};

}  // namespace fa3

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define FA3_ENABLED 1
#endif

// mbarrier waits longer than this many polls trap: a pipeline bug becomes a CUDA error instead of a hang.
#define FA3_WATCHDOG_SPINS (1u << 26)

#ifdef FA3_ENABLED
#define FA3_DEV __device__ __forceinline__

namespace fa3 {

FA3_DEV uint32_t smem_u32(const void *p) { return static_cast<uint32_t>(__cvta_generic_to_shared(p)); }

// ---------------------------------------------------------------------------------------------------------------
// wgmma

FA3_DEV void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
FA3_DEV void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
FA3_DEV void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Keeps the compiler from moving reads/writes of accumulator registers across wgmma issue/wait points.
template <int N>
FA3_DEV void fence_regs(float (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}
template <int N>
FA3_DEV void fence_regs(uint32_t (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+r"(r[i])::"memory");
}

// Shared-memory matrix descriptor. swizzle: 1 = 128B, 3 = 32B. lbo/sbo in bytes.
FA3_DEV uint64_t make_desc(uint32_t saddr, uint32_t lbo, uint32_t sbo, uint32_t swizzle) {
  return (uint64_t)((saddr & 0x3FFFF) >> 4) | ((uint64_t)((lbo >> 4) & 0x3FFF) << 16) |
         ((uint64_t)((sbo >> 4) & 0x3FFF) << 32) | ((uint64_t)swizzle << 62);
}
// K-major (rows x 64 cols, 128-byte rows, 128B swizzle): SBO = 8 rows = 1024 B, LBO unused (1).
FA3_DEV uint64_t desc_k_sw128(uint32_t saddr) { return make_desc(saddr, 16, 1024, 1); }
// K-major (rows x 16 cols, 32-byte rows, 32B swizzle): SBO = 8 rows = 256 B.
FA3_DEV uint64_t desc_k_sw32(uint32_t saddr) { return make_desc(saddr, 16, 256, 3); }
// MN-major V (keys x 72 d in two 64-column panels, 128-byte rows, 128B swizzle): SBO = 8 keys = 1024 B, LBO = the
// stride between the two 64-wide MN atoms (the panel size).
FA3_DEV uint64_t desc_v(uint32_t saddr) { return make_desc(saddr, PANEL_A, 1024, 1); }

// The wrappers add the descriptor offsets OA / OB (16-byte units) inside the asm, so the compiler never
// precomputes and holds one 64-bit descriptor per k-step and stage (that had caused spills). The `0` form writes
// its outputs only ("=f"), which tells the compiler the old S is dead (the accumulate argument must be 0).
// D(64x128, f32) (+)= A(64x16, smem, K-major) * B(128x16, smem, K-major)^T
template <int OA, int OB>
FA3_DEV void wgmma_ss0_n128(float (&d)[64], uint64_t da, uint64_t db, uint32_t accumulate) {
  asm volatile(
      "{\n.reg .pred p;\n.reg .b64 da, db;\nsetp.ne.b32 p, %66, 0;\n"
      "add.s64 da, %64, %67;\nadd.s64 db, %65, %68;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, da, db, p, 1, 1, 0, 0;\n}\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3]), "=f"(d[4]), "=f"(d[5]), "=f"(d[6]), "=f"(d[7]), "=f"(d[8]), "=f"(d[9]), "=f"(d[10]), "=f"(d[11]), "=f"(d[12]), "=f"(d[13]), "=f"(d[14]), "=f"(d[15]), "=f"(d[16]), "=f"(d[17]), "=f"(d[18]), "=f"(d[19]), "=f"(d[20]), "=f"(d[21]), "=f"(d[22]), "=f"(d[23]), "=f"(d[24]), "=f"(d[25]), "=f"(d[26]), "=f"(d[27]), "=f"(d[28]), "=f"(d[29]), "=f"(d[30]), "=f"(d[31]), "=f"(d[32]), "=f"(d[33]), "=f"(d[34]), "=f"(d[35]), "=f"(d[36]), "=f"(d[37]), "=f"(d[38]), "=f"(d[39]), "=f"(d[40]), "=f"(d[41]), "=f"(d[42]), "=f"(d[43]), "=f"(d[44]), "=f"(d[45]), "=f"(d[46]), "=f"(d[47]), "=f"(d[48]), "=f"(d[49]), "=f"(d[50]), "=f"(d[51]), "=f"(d[52]), "=f"(d[53]), "=f"(d[54]), "=f"(d[55]), "=f"(d[56]), "=f"(d[57]), "=f"(d[58]), "=f"(d[59]), "=f"(d[60]), "=f"(d[61]), "=f"(d[62]), "=f"(d[63])
      : "l"(da), "l"(db), "r"(accumulate), "n"(OA), "n"(OB));
}

// D(64x128, f32) (+)= A(64x16, smem, K-major) * B(128x16, smem, K-major)^T
template <int OA, int OB>
FA3_DEV void wgmma_ss_n128(float (&d)[64], uint64_t da, uint64_t db, uint32_t accumulate) {
  asm volatile(
      "{\n.reg .pred p;\n.reg .b64 da, db;\nsetp.ne.b32 p, %66, 0;\n"
      "add.s64 da, %64, %67;\nadd.s64 db, %65, %68;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, da, db, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(da), "l"(db), "r"(accumulate), "n"(OA), "n"(OB));
}

// D(64x72, f32) += A(64x16, registers) * B(16x72, smem, MN-major), D split as o_a (columns 0..63), o_b (64..71).
template <int OB>
FA3_DEV void wgmma_rs_n72_split(float (&o_a)[32], float (&o_b)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                uint64_t db) {
  asm volatile(
      "{\n.reg .pred p;\n.reg .b64 db;\nsetp.ne.b32 p, %41, 0;\n"
      "add.s64 db, %40, %42;\n"
      "wgmma.mma_async.sync.aligned.m64n72k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35}, {%36, %37, %38, %39}, db, p, 1, 1, 1;\n}\n"
      : "+f"(o_a[0]), "+f"(o_a[1]), "+f"(o_a[2]), "+f"(o_a[3]), "+f"(o_a[4]), "+f"(o_a[5]), "+f"(o_a[6]), "+f"(o_a[7]), "+f"(o_a[8]), "+f"(o_a[9]), "+f"(o_a[10]), "+f"(o_a[11]), "+f"(o_a[12]), "+f"(o_a[13]), "+f"(o_a[14]), "+f"(o_a[15]), "+f"(o_a[16]), "+f"(o_a[17]), "+f"(o_a[18]), "+f"(o_a[19]), "+f"(o_a[20]), "+f"(o_a[21]), "+f"(o_a[22]), "+f"(o_a[23]), "+f"(o_a[24]), "+f"(o_a[25]), "+f"(o_a[26]), "+f"(o_a[27]), "+f"(o_a[28]), "+f"(o_a[29]), "+f"(o_a[30]), "+f"(o_a[31]), "+f"(o_b[0]), "+f"(o_b[1]), "+f"(o_b[2]), "+f"(o_b[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "l"(db), "r"(1u), "n"(OB));
}

// ---------------------------------------------------------------------------------------------------------------
// mbarrier, TMA

FA3_DEV void mbar_init(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
FA3_DEV void mbar_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
FA3_DEV void mbar_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
FA3_DEV bool mbar_try_wait(uint32_t bar, uint32_t parity) {
  uint32_t ok;
  asm volatile(
      "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
      : "=r"(ok)
      : "r"(bar), "r"(parity)
      : "memory");
  return ok != 0;
}
FA3_DEV void mbar_wait(uint32_t bar, uint32_t parity) {
  uint32_t spins = 0;
  while (!mbar_try_wait(bar, parity)) {
    if (++spins > FA3_WATCHDOG_SPINS) __trap();
  }
}
FA3_DEV void tma_load_4d(uint32_t dst, const TmaMap *map, uint32_t bar, int c0, int c1, int c2, int c3) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, %5, "
      "%6}], [%2];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(bar), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
      : "memory");
}
FA3_DEV void tma_prefetch_map(const TmaMap *map) {
  asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(map)) : "memory");
}
FA3_DEV void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

FA3_DEV uint32_t pack_bf16(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t *>(&v);
}

// ---------------------------------------------------------------------------------------------------------------
// The math. One warpgroup owns 64 query rows; thread (warp w, lane) holds rows 16w + lane/4 and +8; S accumulator
// element s[4j + e]: row (e < 2 ? r : r + 8), key 8j + 2(lane%4) + (e & 1).

// S = Q K^T over 80 columns: q_a/q_b and k_a/k_b are descriptors of the panels' first row.
template <int KK = 0>
FA3_DEV void gemm_qk(float (&s)[BN / 2], uint64_t q_a, uint64_t q_b, uint64_t k_a, uint64_t k_b) {
  if constexpr (KK == 0) {
    wgmma_ss0_n128<0, 0>(s, q_a, k_a, 0u);
    gemm_qk<1>(s, q_a, q_b, k_a, k_b);
  } else if constexpr (KK < 4) {
    wgmma_ss_n128<2 * KK, 2 * KK>(s, q_a, k_a, 1u);  // +32 B per k-step inside the 128-byte rows
    gemm_qk<KK + 1>(s, q_a, q_b, k_a, k_b);
  } else {
    wgmma_ss_n128<0, 0>(s, q_b, k_b, 1u);
  }
}
// O += P V: p[i] = bf16x2 of s[2i], s[2i+1]; v the descriptor of V's first panel. One n72 wgmma per 16 keys
// (+2048 B per step in both panels).
template <int KK = 0>
FA3_DEV void gemm_pv(float (&o_a)[32], float (&o_b)[4], const uint32_t (&p)[BN / 4], uint64_t v) {
  if constexpr (KK < BN / 16) {
    wgmma_rs_n72_split<KK * 128>(o_a, o_b, p[4 * KK], p[4 * KK + 1], p[4 * KK + 2], p[4 * KK + 3], v);
    gemm_pv<KK + 1>(o_a, o_b, p, v);
  }
}

// Online softmax on raw scores s (in place: s becomes p = 2^(s*c - m*c)); corr = factor for O.

FA3_DEV void softmax_step(float (&s)[BN / 2], float (&m)[2], float (&l)[2], float (&corr)[2], float sl2, bool mask,
                          int key0, int n) {
  const int c = (threadIdx.x % 4) * 2;
  if (mask) {
#pragma unroll
    for (int j = 0; j < BN / 8; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        if (key0 + 8 * j + c + (e & 1) >= n) s[4 * j + e] = -INFINITY;
      }
    }
  }
  float mx[2] = {m[0], m[1]};
#pragma unroll
  for (int j = 0; j < BN / 8; ++j) {
    mx[0] = fmaxf(mx[0], fmaxf(s[4 * j], s[4 * j + 1]));
    mx[1] = fmaxf(mx[1], fmaxf(s[4 * j + 2], s[4 * j + 3]));
  }
  float base[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffff, mx[r], 1));
    mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffff, mx[r], 2));
    corr[r] = exp2f((m[r] - mx[r]) * sl2);
    m[r] = mx[r];
    base[r] = mx[r] * sl2;
  }
  float sum[2] = {0.f, 0.f};
#pragma unroll
  for (int j = 0; j < BN / 8; ++j) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      s[4 * j + e] = exp2f(fmaf(s[4 * j + e], sl2, -base[e / 2]));
      sum[e / 2] += s[4 * j + e];
    }
  }
  l[0] = l[0] * corr[0] + sum[0];
  l[1] = l[1] * corr[1] + sum[1];
}

FA3_DEV void rescale_o(float (&o_a)[32], float (&o_b)[4], const float (&corr)[2]) {
#pragma unroll
  for (int i = 0; i < 32; ++i) o_a[i] *= corr[(i / 2) % 2];
#pragma unroll
  for (int i = 0; i < 4; ++i) o_b[i] *= corr[(i / 2) % 2];
}

FA3_DEV void pack_p(uint32_t (&p)[BN / 4], const float (&s)[BN / 2]) {
#pragma unroll
  for (int i = 0; i < BN / 4; ++i) p[i] = pack_bf16(s[2 * i], s[2 * i + 1]);
}

// Normalise and store this warpgroup's 64 rows (row0 = first token of them).
FA3_DEV void store_o(const Params &p, int b, int h, int row0, float (&o_a)[32], float (&o_b)[4], float (&l)[2]) {
  const int warp = (threadIdx.x % 128) / 32, lane = threadIdx.x % 32;
  const int c = (lane % 4) * 2;
  float inv[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float t = l[r];
    t += __shfl_xor_sync(0xffffffff, t, 1);
    t += __shfl_xor_sync(0xffffffff, t, 2);
    inv[r] = t > 0.f ? 1.f / t : 0.f;
  }
  __nv_bfloat16 *o = p.o + (long long)b * p.ob + (long long)h * p.oh;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int tok = row0 + warp * 16 + lane / 4 + r * 8;
    if (tok < p.n) {
      __nv_bfloat16 *dst = o + (long long)tok * p.orow + c;
#pragma unroll
      for (int j = 0; j < 8; ++j)
        *reinterpret_cast<uint32_t *>(dst + 8 * j) = pack_bf16(o_a[4 * j + 2 * r] * inv[r], o_a[4 * j + 2 * r + 1] * inv[r]);
      *reinterpret_cast<uint32_t *>(dst + 64) = pack_bf16(o_b[2 * r] * inv[r], o_b[2 * r + 1] * inv[r]);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// The kernel.

FA3_DEV void attention(const TmaMaps &maps, const Params &p) {
  extern __shared__ __align__(1024) uint8_t smem_raw[];
  const uint32_t raw = smem_u32(smem_raw);
  const uint32_t base = (raw + 1023) & ~1023u;
  const uint32_t bar_q = base + BAR;
  auto bar_full_k = [&](int s) { return base + BAR + 8 + 8 * s; };
  auto bar_empty_k = [&](int s) { return base + BAR + 8 + 8 * ST + 8 * s; };
  auto bar_full_v = [&](int s) { return base + BAR + 8 + 16 * ST + 8 * s; };
  auto bar_empty_v = [&](int s) { return base + BAR + 8 + 24 * ST + 8 * s; };
  auto k_tile = [&](int s) { return base + KV0 + s * STAGE; };

  uint32_t smem_bytes;
  asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(smem_bytes));
  if (smem_bytes < SMEM) __trap();  // the host's byte count (kernels/src/fa3.rs) disagrees with this file's

  const int wg = threadIdx.x / 128;
  const int b = blockIdx.z, h = blockIdx.y, m0 = blockIdx.x * BM;
  const int nkv = (p.n + BN - 1) / BN;

  if (threadIdx.x == 0) {
    mbar_init(bar_q, 1);
#pragma unroll
    for (int s = 0; s < ST; ++s) {
      mbar_init(bar_full_k(s), 1);
      mbar_init(bar_full_v(s), 1);
      mbar_init(bar_empty_k(s), 4 * NC);  // lane 0 of each consumer warp
      mbar_init(bar_empty_v(s), 4 * NC);
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    fence_proxy_async();
  }
  __syncthreads();

  if (wg == 0) {
    // ---------------- producer ----------------
    asm volatile("setmaxnreg.dec.sync.aligned.u32 24;\n" ::: "memory");
    if (threadIdx.x == 0) {
      tma_prefetch_map(&maps.qa);
      tma_prefetch_map(&maps.qb);
      tma_prefetch_map(&maps.ka);
      tma_prefetch_map(&maps.kb);
      tma_prefetch_map(&maps.va);
      tma_prefetch_map(&maps.vb);
      mbar_expect_tx(bar_q, TX_Q);
      tma_load_4d(base + Q_A, &maps.qa, bar_q, 0, h, m0, b);
      tma_load_4d(base + Q_B, &maps.qb, bar_q, 64, h, m0, b);
      int s = 0;
      uint32_t ph = 0;
      for (int i = 0; i < nkv; ++i) {
        const int row = (nkv - 1 - i) * BN;  // reverse order: the partial tile first
        const uint32_t kt = k_tile(s), vt = kt + K_TILE;
        mbar_wait(bar_empty_k(s), ph ^ 1);
        mbar_expect_tx(bar_full_k(s), TX_K);
        tma_load_4d(kt, &maps.ka, bar_full_k(s), 0, h, row, b);
        tma_load_4d(kt + PANEL_A, &maps.kb, bar_full_k(s), 64, h, row, b);
        mbar_wait(bar_empty_v(s), ph ^ 1);
        mbar_expect_tx(bar_full_v(s), TX_V);
        tma_load_4d(vt, &maps.va, bar_full_v(s), 0, h, row, b);
        tma_load_4d(vt + PANEL_A, &maps.vb, bar_full_v(s), 64, h, row, b);
        if (++s == ST) {
          s = 0;
          ph ^= 1;
        }
      }
    }
  } else {
    // ---------------- consumers ----------------
    asm volatile("setmaxnreg.inc.sync.aligned.u32 160;\n" ::: "memory");  // 128*24 + 384*160 <= 65536
    const int cw = wg - 1;  // consumer index 0..2: rows cw*64 .. +63 of the CTA tile
    const int lane = threadIdx.x % 32;
    const uint64_t dq_a = desc_k_sw128(base + Q_A + cw * 64 * 128), dq_b = desc_k_sw32(base + Q_B + cw * 64 * 32);

    float o_a[32], o_b[4], s[BN / 2];
    uint32_t pf[BN / 4];
#pragma unroll
    for (int i = 0; i < 32; ++i) o_a[i] = 0.f;
#pragma unroll
    for (int i = 0; i < 4; ++i) o_b[i] = 0.f;
#pragma unroll
    for (int i = 0; i < BN / 2; ++i) s[i] = 0.f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f}, corr[2] = {1.f, 1.f};

    mbar_wait(bar_q, 0);
    const bool mask_first = nkv * BN > p.n;

    int st = 0;
    uint32_t ph = 0;
    for (int i = 0; i < nkv; ++i) {
      mbar_wait(bar_full_k(st), ph);
      fence_regs(s);
      wgmma_fence();
      const uint32_t kt = k_tile(st);
      gemm_qk(s, dq_a, dq_b, desc_k_sw128(kt), desc_k_sw32(kt + PANEL_A));
      wgmma_commit();
      wgmma_wait<0>();
      fence_regs(s);
      if (lane == 0) mbar_arrive(bar_empty_k(st));

      // Only the first tile (the last keys) can be partial.
      softmax_step(s, m, l, corr, p.scale_log2, i == 0 && mask_first, (nkv - 1 - i) * BN, p.n);
      rescale_o(o_a, o_b, corr);
      pack_p(pf, s);

      mbar_wait(bar_full_v(st), ph);
      fence_regs(o_a);
      fence_regs(o_b);
      fence_regs(pf);
      wgmma_fence();
      gemm_pv(o_a, o_b, pf, desc_v(k_tile(st) + K_TILE));
      wgmma_commit();
      wgmma_wait<0>();
      fence_regs(o_a);
      fence_regs(o_b);
      if (lane == 0) mbar_arrive(bar_empty_v(st));
      if (++st == ST) {
        st = 0;
        ph ^= 1;
      }
    }
    store_o(p, b, h, m0 + cw * 64, o_a, o_b, l);
  }
}

}  // namespace fa3
#endif  // FA3_ENABLED

// Grid: x = ceil(n / 192) query tiles, y = heads, z = batch; 512 threads; fa3::SMEM bytes of dynamic shared
// memory (SMEM_BYTES in kernels/src/fa3.rs; the kernel traps on less). Other targets than sm_90a get an empty
// body (never launched: the host routes here only on compute capability 9.0).
extern "C" __global__ void __launch_bounds__(512, 1)
    fa3_attention_hd72(const __grid_constant__ fa3::TmaMaps maps, __nv_bfloat16 *o, long long ob, long long oh,
                       long long orow, int n, float scale_log2) {
#ifdef FA3_ENABLED
  const fa3::Params p{o, ob, oh, orow, n, scale_log2};
  fa3::attention(maps, p);
#endif
}
