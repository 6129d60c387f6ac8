// The CPU kernels, written once over a SIMD vector type V (see simd/). Each
// kernels_<isa>.cpp includes this file inside its own namespace, after its
// vector header and after defining kRowBlock (rows per register tile), and
// compiles it with that ISA's flags. Keep everything here in that namespace:
// no std:: templates instantiated on vector types, no statics.
//
// Besides arithmetic, V provides load / store, load_partial / store_partial
// (lanes [0, n)), hsum, and keep_first(n): lanes [0, n) of the vector, the
// others +0 (even where they held NaN).
//
// Register tile: RB rows x one panel (NQ vectors) of accumulators. The same
// micro-kernel serves the big GEMMs, the forward step (A = h_{t-1}, panel =
// every gate of U hidden blocks of W_hh, see kernels.h) and the backward step
// (A = dG_{t+1}, panel = four hidden blocks of W_hh^T).

inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

// relu on the vector types, lane by lane (found by argument-dependent lookup
// from gate_math.h's rnn_forward / rnn_backward, like act_tanh).
template <class V>
FL_INLINE V act_relu(V x) {
  alignas(64) typename V::T l[V::width];
  x.store(l);
  for (int i = 0; i < V::width; ++i) l[i] = l[i] < 0 ? typename V::T(0) : l[i];  // NaN stays NaN
  return V::load(l);
}
template <class V>
FL_INLINE V relu_backward(V h, V dh) {
  alignas(64) typename V::T lh[V::width], ld[V::width];
  h.store(lh);
  dh.store(ld);
  for (int i = 0; i < V::width; ++i) ld[i] = lh[i] > 0 ? ld[i] : typename V::T(0);
  return V::load(ld);
}

template <class V>
struct Impl {
  using T = typename V::T;
  static constexpr int W = V::width;
  static constexpr int P = 4 * W;
  static constexpr int RBMAX = kRowBlock;
  // Products summed in registers before joining the running total (see panel_dot).
  static constexpr int64_t KS = 32;
  // GEMM K block: C tiles are loaded and stored once per block.
  static constexpr int64_t KC = kGemmKBlock;
  // Rows per GEMM row block, a multiple of RBMAX so row groups never depend
  // on how rows were split among threads.
  static constexpr int64_t MC = RBMAX * 40;
  static_assert(kGemmRowPiece % MC == 0, "a GEMM split at kGemmRowPiece rows must keep the row blocks");

  // part[r][q] += sum_k a[r][k0 + k] * b[k*ldb + q*W + lane], k in [0, kn),
  // q < NQ (4 for the GEMMs and the LSTM's steps, 3 for the GRU's).
  template <int RB, int NQ = 4>
  FL_INLINE static void panel_dot_chunk(const T* const* a, int64_t k0, int64_t kn, const T* b, int64_t ldb,
                                     V (&part)[RB][NQ]) {
    if constexpr (RB == 1) {
      // One row has only NQ FMA chains: split k into even and odd halves
      // to hide the FMA latency.
      V odd[NQ];
      for (int q = 0; q < NQ; ++q) odd[q] = V(T(0));
      const T* a0 = a[0] + k0;
      int64_t k = 0;
      for (; k + 1 < kn; k += 2) {
        const T* b0 = b + k * ldb;
        const T* b1 = b0 + ldb;
        const V x0(a0[k]), x1(a0[k + 1]);
        for (int q = 0; q < NQ; ++q) part[0][q] = fma(x0, V::load(b0 + q * W), part[0][q]);
        for (int q = 0; q < NQ; ++q) odd[q] = fma(x1, V::load(b1 + q * W), odd[q]);
      }
      if (k < kn) {
        const T* b0 = b + k * ldb;
        const V x0(a0[k]);
        for (int q = 0; q < NQ; ++q) part[0][q] = fma(x0, V::load(b0 + q * W), part[0][q]);
      }
      for (int q = 0; q < NQ; ++q) part[0][q] = part[0][q] + odd[q];
    } else {
      for (int64_t k = 0; k < kn; ++k) {
        const T* bk = b + k * ldb;
        V bv[NQ];
        for (int q = 0; q < NQ; ++q) bv[q] = V::load(bk + q * W);
        for (int r = 0; r < RB; ++r) {
          const V x(a[r][k0 + k]);
          for (int q = 0; q < NQ; ++q) part[r][q] = fma(x, bv[q], part[r][q]);
        }
      }
    }
  }

  // acc[r][q] += sum_k a[r][k] * b[k*ldb + q*W + lane], k in [0, K).
  // Two-level summation: chunks of KS products are summed in registers and
  // the chunk sums added to a running total kept in L1, so the rounding
  // error grows like KS + K/KS rather than K (long sums, e.g. dW over every
  // step and row, stay as accurate as a blocked BLAS).
  template <int RB, int NQ = 4>
  FL_INLINE static void panel_dot(const T* const* a, int64_t K, const T* b, int64_t ldb, V (&acc)[RB][NQ]) {
    if (K <= KS) {
      panel_dot_chunk<RB, NQ>(a, 0, K, b, ldb, acc);
      return;
    }
    alignas(64) T total[RB][NQ][W];
    for (int r = 0; r < RB; ++r)
      for (int q = 0; q < NQ; ++q) acc[r][q].store(total[r][q]);
    for (int64_t k0 = 0; k0 < K; k0 += KS) {
      V part[RB][NQ];
      for (int r = 0; r < RB; ++r)
        for (int q = 0; q < NQ; ++q) part[r][q] = V(T(0));
      panel_dot_chunk<RB, NQ>(a, k0, min64(KS, K - k0), b + k0 * ldb, ldb, part);
      for (int r = 0; r < RB; ++r)
        for (int q = 0; q < NQ; ++q) (V::load(total[r][q]) + part[r][q]).store(total[r][q]);
    }
    for (int r = 0; r < RB; ++r)
      for (int q = 0; q < NQ; ++q) acc[r][q] = V::load(total[r][q]);
  }

  // ------------------------------------------- bfloat16 operands (float only)
  // part[r][q] += sum over pairs kk in [kk0, kk0 + kn) of the two products
  // a[r][2kk + i] * B[2kk + i][q*W + lane], i = 0, 1: a rows of bfloat16,
  // b bfloat16 pair rows (kernels.h) ldb apart, sums in float32.
  template <int RB, int NQ>
  FL_INLINE static void panel_dot_chunk_bf16(const uint16_t* const* a, int64_t kk0, int64_t kn,
                                             const uint16_t* b, int64_t ldb, V (&part)[RB][NQ]) {
#if defined(FL_HAVE_DPBF16)
    // One row has only NQ dot chains: even and odd pairs go to two sets.
    V other[RB == 1 ? NQ : 1];
    if constexpr (RB == 1)
      for (int q = 0; q < NQ; ++q) other[q] = V(T(0));
    for (int64_t kk = 0; kk < kn; ++kk) {
      const uint16_t* bk = b + kk * ldb;
      __m512i bv[NQ];
      for (int q = 0; q < NQ; ++q) bv[q] = _mm512_loadu_si512(bk + q * 2 * W);
      for (int r = 0; r < RB; ++r) {
        uint32_t pair;
        std::memcpy(&pair, a[r] + 2 * (kk0 + kk), sizeof pair);
        const __m512bh x = (__m512bh)_mm512_set1_epi32(int(pair));
        if (RB == 1 && (kk & 1))
          for (int q = 0; q < NQ; ++q) other[q] = V(_mm512_dpbf16_ps(other[q].v, x, (__m512bh)bv[q]));
        else
          for (int q = 0; q < NQ; ++q) part[r][q] = V(_mm512_dpbf16_ps(part[r][q].v, x, (__m512bh)bv[q]));
      }
    }
    if constexpr (RB == 1)
      for (int q = 0; q < NQ; ++q) part[0][q] = part[0][q] + other[q];
#else
    for (int64_t kk = 0; kk < kn; ++kk) {
      const uint16_t* bk = b + kk * ldb;
      V even[NQ], odd[NQ];
      for (int q = 0; q < NQ; ++q) V::load_bf16_pairs(bk + q * 2 * W, even[q], odd[q]);
      for (int r = 0; r < RB; ++r) {
        const uint16_t* ar = a[r] + 2 * (kk0 + kk);
        const V x0(bf16_to_float(ar[0])), x1(bf16_to_float(ar[1]));
        for (int q = 0; q < NQ; ++q) part[r][q] = fma(x1, odd[q], fma(x0, even[q], part[r][q]));
      }
    }
#endif
  }

  // acc[r][q] += sum over k < K of a[r][k] * B[k][q*W + lane] (bfloat16
  // operands, rows of a zero-padded to even K), summed in the registers: no
  // two-level summation as panel_dot's, whose stores of the running total
  // cost ~10% of a bfloat16 tile; the sums' float32 rounding (about K/2
  // roundings of 2^-24) stays far below the operands' (2^-9 each).
  template <int RB, int NQ>
  FL_INLINE static void panel_dot_bf16(const uint16_t* const* a, int64_t K, const uint16_t* b, int64_t ldb,
                                       V (&acc)[RB][NQ]) {
    panel_dot_chunk_bf16<RB, NQ>(a, 0, (K + 1) / 2, b, ldb, acc);
  }

  // n floats rounded to bfloat16 (V::to_bf16, whole vectors, the tail one by one).
  FL_INLINE static void row_to_bf16(const T* src, uint16_t* dst, int64_t n) {
    int64_t k = 0;
    for (; k + W <= n; k += W) V::to_bf16(src + k, dst + k);
    for (; k < n; ++k) dst[k] = float_to_bf16(src[k]);
  }

  // Calls fn.template operator()<rb>() for a runtime rb in [1, RBMAX].
  template <class Fn>
  static inline void with_row_block(int64_t rb, Fn&& fn) {
    switch (rb) {
      case 1: fn.template operator()<1>(); break;
      case 2: if constexpr (RBMAX >= 2) fn.template operator()<2>(); break;
      case 3: if constexpr (RBMAX >= 3) fn.template operator()<3>(); break;
      case 4: if constexpr (RBMAX >= 4) fn.template operator()<4>(); break;
      case 5: if constexpr (RBMAX >= 5) fn.template operator()<5>(); break;
      case 6: if constexpr (RBMAX >= 6) fn.template operator()<6>(); break;
      default: break;
    }
  }

  FL_INLINE static V load_upto(const T* p, int64_t n) {  // n valid elements, may be <= 0
    if (n >= W) return V::load(p);
    if (n <= 0) return V(T(0));
    return V::load_partial(p, int(n));
  }
  FL_INLINE static void store_upto(const V& v, T* p, int64_t n) {
    if (n >= W) v.store(p);
    else if (n > 0) v.store_partial(p, int(n));
  }

  // ---------------------------------------------------------------- GEMM
  // Thread tid's share of an M x N GEMM: panels [p0, p1) of P columns when
  // there are enough of them, else row groups [grp0, grp1) of RBMAX rows;
  // false when the share is empty.
  static bool gemm_share(int64_t M, int64_t N, int tid, int nthreads, int64_t& p0, int64_t& p1, int64_t& grp0,
                         int64_t& grp1) {
    const int64_t n_panels = (N + P - 1) / P;
    const int64_t n_groups = (M + RBMAX - 1) / RBMAX;
    p0 = 0, p1 = n_panels, grp0 = 0, grp1 = n_groups;
    if (n_panels >= 4 * nthreads || n_panels >= n_groups) {
      p0 = n_panels * tid / nthreads;
      p1 = n_panels * (tid + 1) / nthreads;
    } else {
      grp0 = n_groups * tid / nthreads;
      grp1 = n_groups * (tid + 1) / nthreads;
    }
    return p0 < p1 && grp0 < grp1;
  }

  // One register tile: rows [row0, row0 + RB) x columns of `panel`, K range
  // [k0, k0 + kc); b_block points at that panel's row k0, rows ldb apart.
  template <int RB>
  static void gemm_tile(const GemmArgs<T>& g, int64_t row0, int64_t panel, int64_t k0, int64_t kc,
                        const T* b_block, int64_t ldb) {
    const bool first = (k0 == 0);
    const int64_t col0 = panel * P;
    V acc[RB][4];
    const T* a[RB];
    for (int r = 0; r < RB; ++r) {
      T* crow = g.c_rows[row0 + r];
      for (int q = 0; q < 4; ++q) {
        const int64_t col = col0 + q * W;
        V v = (first && g.c_init) ? V::load(g.c_init + col) : V(T(0));
        if (!first || g.accumulate) v = v + load_upto(crow + col, g.N - col);
        acc[r][q] = v;
      }
      a[r] = g.a_rows[row0 + r] + k0;
    }
    panel_dot<RB>(a, kc, b_block, ldb, acc);
    for (int r = 0; r < RB; ++r) {
      T* crow = g.c_rows[row0 + r];
      for (int q = 0; q < 4; ++q) store_upto(acc[r][q], crow + col0 + q * W, g.N - col0 - q * W);
    }
  }

  static void gemm(const GemmArgs<T>& g, int tid, int nthreads) {
    if (g.M <= 0 || g.N <= 0) return;
    int64_t p0, p1, grp0, grp1;
    if (!gemm_share(g.M, g.N, tid, nthreads, p0, p1, grp0, grp1)) return;
    if (g.K <= 0) {  // C = c_init (+ C): still has to be written
      for (int64_t grp = grp0; grp < grp1; ++grp)
        for (int64_t p = p0; p < p1; ++p) {
          const int64_t row0 = grp * RBMAX;
          with_row_block(min64(RBMAX, g.M - row0),
                         [&]<int RB>() { gemm_tile<RB>(g, row0, p, 0, 0, g.b, g.ldb); });
        }
      return;
    }
    if (g.ldb != P) {
      // Strided panels (e.g. dG, whose rows are 4Hp apart, often a multiple
      // of 4 KiB): rows of one K block would share a few cache sets, so each
      // block of a panel is first copied to a contiguous buffer.
      alignas(64) T slice[KC * P];
      for (int64_t k0 = 0; k0 < g.K; k0 += KC) {
        const int64_t kc = min64(KC, g.K - k0);
        for (int64_t p = p0; p < p1; ++p) {
          const T* src = g.b + p * g.b_panel_stride + k0 * g.ldb;
          for (int64_t k = 0; k < kc; ++k)
            for (int q = 0; q < 4; ++q) V::load(src + k * g.ldb + q * W).store(slice + k * P + q * W);
          for (int64_t grp = grp0; grp < grp1; ++grp) {
            const int64_t row0 = grp * RBMAX;
            with_row_block(min64(RBMAX, g.M - row0),
                           [&]<int RB>() { gemm_tile<RB>(g, row0, p, k0, kc, slice, P); });
          }
        }
      }
      return;
    }
    const int64_t groups_per_block = MC / RBMAX;
    for (int64_t k0 = 0; k0 < g.K; k0 += KC) {
      const int64_t kc = min64(KC, g.K - k0);
      for (int64_t gb = grp0; gb < grp1; gb += groups_per_block) {
        const int64_t gb_end = min64(grp1, gb + groups_per_block);
        for (int64_t p = p0; p < p1; ++p)
          for (int64_t grp = gb; grp < gb_end; ++grp) {
            const int64_t row0 = grp * RBMAX;
            with_row_block(min64(RBMAX, g.M - row0),
                           [&]<int RB>() {
                             gemm_tile<RB>(g, row0, p, k0, kc, g.b + p * g.b_panel_stride + k0 * g.ldb, g.ldb);
                           });
          }
      }
    }
  }

  // One tile of gemm_bf16 (as gemm_tile): pairs [kk0, kk0 + kc2) of K.
  template <int RB>
  static void gemm_bf16_tile(const GemmBf16Args& g, int64_t row0, int64_t panel, int64_t kk0, int64_t kc2,
                             const uint16_t* b_block) {
    const bool first = (kk0 == 0);
    const int64_t col0 = panel * P;
    V acc[RB][4];
    const uint16_t* a[RB];
    for (int r = 0; r < RB; ++r) {
      T* crow = g.c_rows[row0 + r];
      for (int q = 0; q < 4; ++q) {
        const int64_t col = col0 + q * W;
        V v = (first && g.c_init) ? V::load(g.c_init + col) : V(T(0));
        if (!first || g.accumulate) v = v + load_upto(crow + col, g.N - col);
        acc[r][q] = v;
      }
      a[r] = g.a_rows[row0 + r] + 2 * kk0;
    }
    panel_dot_bf16<RB, 4>(a, 2 * kc2, b_block, g.ldb, acc);
    for (int r = 0; r < RB; ++r) {
      T* crow = g.c_rows[row0 + r];
      for (int q = 0; q < 4; ++q) store_upto(acc[r][q], crow + col0 + q * W, g.N - col0 - q * W);
    }
  }

  // C (+)= c_init + A B with bfloat16 A and B (pair panels, contiguous:
  // ldb = 2P), float32 C; blocked and split among threads as gemm.
  static void gemm_bf16(const GemmBf16Args& g, int tid, int nthreads) {
    if (g.M <= 0 || g.N <= 0) return;
    int64_t p0, p1, grp0, grp1;
    if (!gemm_share(g.M, g.N, tid, nthreads, p0, p1, grp0, grp1)) return;
    const int64_t K2 = (g.K + 1) / 2, KC2 = KC / 2;
    const int64_t groups_per_block = MC / RBMAX;
    for (int64_t kk0 = 0; kk0 < K2 || kk0 == 0; kk0 += KC2) {  // K = 0 still writes C
      const int64_t kc2 = min64(KC2, K2 - kk0);
      for (int64_t gb = grp0; gb < grp1; gb += groups_per_block) {
        const int64_t gb_end = min64(grp1, gb + groups_per_block);
        for (int64_t p = p0; p < p1; ++p)
          for (int64_t grp = gb; grp < gb_end; ++grp) {
            const int64_t row0 = grp * RBMAX;
            with_row_block(min64(RBMAX, g.M - row0), [&]<int RB>() {
              gemm_bf16_tile<RB>(g, row0, p, kk0, kc2, g.b + p * g.b_panel_stride + kk0 * g.ldb);
            });
          }
      }
      if (K2 == 0) break;
    }
  }

  // ---------------------------------------------------------- forward step
  // Step panel j of cell C: rows [row0, row0 + RB). kBf16: the bfloat16
  // step (FwdStepArgs::w_bf16 and h_bf16 in place of w and h_prev).
  template <int C, int RB, bool kBf16 = false>
  static void fwd_tile(const FwdStepArgs<T>& s, int64_t j, int64_t row0) {
    constexpr CellShape cs = cell_shape(C);
    constexpr bool kGruLike = C == kGru || C == kGruFedBack;
    constexpr int G = cs.gates, U = cs.blocks_per_panel, PS = G * U * W;  // PS: gx's panel width
    constexpr int NQ = C == kGruFedBack ? 4 : G * U, PW = NQ * W;         // PW: the weights'
    V acc[RB][NQ];
    const T* a[RB];
    for (int r = 0; r < RB; ++r) {
      const T* gx = s.gx + (row0 + r) * s.ld_gx + j * PS;
      if constexpr (kGruLike) {  // r, z: input term + both biases; hn: b_hn (the input term joins after r)
        acc[r][0] = V::load(gx);
        acc[r][1] = V::load(gx + W);
        acc[r][2] = s.bias_hn ? V::load(s.bias_hn + j * W) : V(T(0));
        if constexpr (C == kGruFedBack) acc[r][3] = V::load(gx + 2 * W);  // xn: b_in + h_{t-1} W_in
      } else {
        for (int q = 0; q < NQ; ++q) acc[r][q] = V::load(gx + q * W);
      }
      a[r] = s.h_prev + (row0 + r) * s.ld_h_prev;
    }
    if constexpr (kBf16) {
      const uint16_t* ab[RB];
      for (int r = 0; r < RB; ++r) ab[r] = s.h_bf16 + (row0 + r) * s.ld_h_bf16;
      const int64_t Kd = s.K * s.h_repeats;
      panel_dot_bf16<RB, NQ>(ab, Kd, s.w_bf16 + j * ((Kd + 1) / 2) * 2 * PW, 2 * PW, acc);
    } else {
      panel_dot<RB, NQ>(a, s.K, s.w + j * s.K * PW, PW, acc);
    }
    for (int u = 0; u < U; ++u) {
      const int64_t blk = j * U + u;
      if (blk * W >= s.Hp) break;  // the RNN's last panel may hold blocks past Hp
      const int64_t valid = s.H - blk * W;
      // Padded units: their zero weights times a non-finite input (x or h_{t-1})
      // would be NaN, saved as activations and state, and summed into real
      // units by the backward's GEMMs. A zero pre-activation with a zero
      // c_prev (or h_prev) keeps every padded lane of c, h and m exactly zero
      // (the GRU: n = tanh(0) = 0, h = 0 + z * (0 - 0)).
      if (valid < W)
        for (int r = 0; r < RB; ++r)
          for (int q = 0; q < (U == 1 ? NQ : G); ++q) acc[r][u * G + q] = acc[r][u * G + q].keep_first(int(valid));
      for (int r = 0; r < RB; ++r) {
        const int64_t row = row0 + r;
        V h_new;
        T* ap = s.acts ? s.acts + row * s.ld_acts + blk * cs.saved * W : nullptr;
        if constexpr (C == kLstm) {
          const V c_prev = V::load(s.c_prev + row * s.ld_c_prev + blk * W);
          V c_new;
          const GateActs<V> act = cell_forward(acc[r][0], acc[r][1], acc[r][2], acc[r][3], c_prev, c_new, h_new);
          c_new.store(s.c_out + row * s.ld_c_out + blk * W);
          if (ap) {
            act.i.store(ap);
            act.f.store(ap + W);
            act.g.store(ap + 2 * W);
            act.o.store(ap + 3 * W);
          }
        } else if constexpr (kGruLike) {
          V xn;
          if constexpr (C == kGruFedBack) {
            xn = acc[r][3];
          } else {
            xn = V::load(s.gx + row * s.ld_gx + j * PS + 2 * W);
            if (valid < W) xn = xn.keep_first(int(valid));
          }
          const V h_prev = V::load(s.h_prev + row * s.ld_h_prev + blk * W);
          const GruActs<V> act = gru_forward(acc[r][0], acc[r][1], xn, acc[r][2], h_prev, h_new);
          if (ap) {
            act.r.store(ap);
            act.z.store(ap + W);
            act.n.store(ap + 2 * W);
            act.hn.store(ap + 3 * W);
          }
        } else {
          h_new = rnn_forward<C == kRnnRelu>(acc[r][u]);
        }
        h_new.store(s.h_out + row * s.ld_h_out + blk * W);
        if (s.y) store_upto(h_new, s.y + s.y_row_offset[row] + blk * W, valid);
      }
    }
  }

  template <int C>
  static void fwd_step(const FwdStepArgs<T>& s, int64_t panel_begin, int64_t panel_end) {
    for (int64_t j = panel_begin; j < panel_end; ++j)
      for (int64_t row0 = 0; row0 < s.rows; row0 += RBMAX)
        with_row_block(min64(RBMAX, s.rows - row0),
                       [&]<int RB>() { fwd_tile<C, RB>(s, j, row0); });
  }

  // The bfloat16 step: h_{t-1} rounded to bfloat16 into the thread's
  // scratch (every row: each thread reads all of h_{t-1}), then the tiles.
  template <int C>
  static void fwd_step_bf16(const FwdStepArgs<T>& s, int64_t panel_begin, int64_t panel_end) {
    for (int64_t r = 0; r < s.rows; ++r) {
      uint16_t* hb = s.h_bf16 + r * s.ld_h_bf16;
      row_to_bf16(s.h_prev + r * s.ld_h_prev, hb, s.K);
      for (int64_t i = 1; i < s.h_repeats; ++i)
        for (int64_t k = 0; k < s.K; ++k) hb[i * s.K + k] = hb[k];
      if (s.K * s.h_repeats % 2) hb[s.K * s.h_repeats] = 0;
    }
    for (int64_t j = panel_begin; j < panel_end; ++j)
      for (int64_t row0 = 0; row0 < s.rows; row0 += RBMAX)
        with_row_block(min64(RBMAX, s.rows - row0),
                       [&]<int RB>() { fwd_tile<C, RB, true>(s, j, row0); });
  }

  // --------------------------------------------------------- backward step
  // kBf16: the bfloat16 step (BwdStepArgs::wt_bf16 and dg_bf16 in place of wt and dg_next).
  template <int C, int RB, bool kBf16 = false>
  static void bwd_tile(const BwdStepArgs<T>& s, int64_t q, int64_t row0, bool recurrent) {
    constexpr CellShape cs = cell_shape(C);
    constexpr int G = cs.gates, U = cs.blocks_per_panel, PS = G * U * W;
    const int64_t n_blocks = s.Hp / W;
    V acc[RB][4];
    if (recurrent) {
      const T* a[RB];
      for (int r = 0; r < RB; ++r) {
        for (int jb = 0; jb < 4; ++jb) acc[r][jb] = V(T(0));
        a[r] = s.dg_next + (row0 + r) * s.ld_dg_next;
      }
      if constexpr (kBf16) {
        const uint16_t* ab[RB];
        for (int r = 0; r < RB; ++r) ab[r] = s.dg_bf16 + (row0 + r) * s.ld_dg_bf16;
        panel_dot_bf16<RB, 4>(ab, s.K, s.wt_bf16 + q * ((s.K + 1) / 2) * 2 * P, 2 * P, acc);
      } else {
        panel_dot<RB>(a, s.K, s.wt + q * s.K * P, P, acc);
      }
      if (s.wt2) {
        for (int r = 0; r < RB; ++r) a[r] = s.a2 + (row0 + r) * s.ld_a2;
        panel_dot<RB>(a, s.K2, s.wt2 + q * s.K2 * P, P, acc);
      }
    } else {
      for (int r = 0; r < RB; ++r)
        for (int jb = 0; jb < 4; ++jb) {
          const int64_t j = 4 * q + jb;
          acc[r][jb] = j < n_blocks ? V::load(s.dh_init + (row0 + r) * s.ld_dh_init + j * W) : V(T(0));
        }
    }
    for (int r = 0; r < RB; ++r) {
      const int64_t row = row0 + r;
      for (int jb = 0; jb < 4; ++jb) {
        const int64_t j = 4 * q + jb;
        if (j >= n_blocks) break;
        V dh = acc[r][jb];
        // Padded units' dh is a sum of zero weights times dG_{t+1}, NaN where
        // that is infinite: zero it, so their dG stays exactly zero (see fwd_tile).
        if (s.H - j * W < W) dh = dh.keep_first(int(s.H - j * W));
        if (s.dy) dh = dh + load_upto(s.dy + s.dy_row_offset[row] + j * W, s.H - j * W);
        const T* ap = s.acts ? s.acts + row * s.ld_acts + j * cs.saved * W : nullptr;
        T* gp = s.dg + row * s.ld_dg + (j / U) * PS + (j % U) * G * W;
        if constexpr (C == kLstm) {
          const GateActs<V> act{V::load(ap), V::load(ap + W), V::load(ap + 2 * W), V::load(ap + 3 * W)};
          const V c = V::load(s.c + row * s.ld_c + j * W);
          const V c_prev = V::load(s.c_prev + row * s.ld_c_prev + j * W);
          T* dcp = s.dc + row * s.ld_dc + j * W;
          V dc_prev;
          const GateGrads<V> d = cell_backward(act, c, c_prev, dh, V::load(dcp), dc_prev);
          dc_prev.store(dcp);
          d.i.store(gp);
          d.f.store(gp + W);
          d.g.store(gp + 2 * W);
          d.o.store(gp + 3 * W);
        } else if constexpr (C == kGru) {
          const GruActs<V> act{V::load(ap), V::load(ap + W), V::load(ap + 2 * W), V::load(ap + 3 * W)};
          const V h_prev = V::load(s.c_prev + row * s.ld_c_prev + j * W);
          T* dcp = s.dc + row * s.ld_dc + j * W;
          dh = dh + V::load(dcp);
          V direct;
          const GruGrads<V> d = gru_backward(act, h_prev, dh, direct);
          direct.store(dcp);
          d.r.store(gp);
          d.z.store(gp + W);
          d.hn.store(gp + 2 * W);
          d.xn.store(s.dgx_n + row * s.ld_dgx_n + j * W);
        } else {
          const V h = V::load(s.c + row * s.ld_c + j * W);
          rnn_backward<C == kRnnRelu>(h, dh).store(gp);
        }
      }
    }
  }

  template <int C>
  static void bwd_step(const BwdStepArgs<T>& s, int64_t group_begin, int64_t group_end) {
    for (int64_t q = group_begin; q < group_end; ++q) {
      for (int64_t row0 = 0; row0 < s.rec_rows; row0 += RBMAX)
        with_row_block(min64(RBMAX, s.rec_rows - row0),
                       [&]<int RB>() { bwd_tile<C, RB>(s, q, row0, true); });
      for (int64_t row0 = s.rec_rows; row0 < s.rows; row0 += RBMAX)
        with_row_block(min64(RBMAX, s.rows - row0),
                       [&]<int RB>() { bwd_tile<C, RB>(s, q, row0, false); });
    }
  }

  // The bfloat16 step: A = dG_{t+1} rounded to bfloat16 into the thread's
  // scratch (every recurrent row), then the tiles.
  template <int C>
  static void bwd_step_bf16(const BwdStepArgs<T>& s, int64_t group_begin, int64_t group_end) {
    for (int64_t r = 0; r < s.rec_rows && !s.dg_bf16_ready; ++r) {
      uint16_t* db = s.dg_bf16 + r * s.ld_dg_bf16;
      row_to_bf16(s.dg_next + r * s.ld_dg_next, db, s.K);
      if (s.K % 2) db[s.K] = 0;
    }
    for (int64_t q = group_begin; q < group_end; ++q) {
      for (int64_t row0 = 0; row0 < s.rec_rows; row0 += RBMAX)
        with_row_block(min64(RBMAX, s.rec_rows - row0),
                       [&]<int RB>() { bwd_tile<C, RB, true>(s, q, row0, true); });
      for (int64_t row0 = s.rec_rows; row0 < s.rows; row0 += RBMAX)
        with_row_block(min64(RBMAX, s.rows - row0),
                       [&]<int RB>() { bwd_tile<C, RB, true>(s, q, row0, false); });
    }
  }

  // ------------------------------------------------------------ one cell
  static inline T dot(const T* a, const T* b, int64_t K) {
    V s0(T(0)), s1(T(0));
    int64_t k = 0;
    for (; k + 2 * W <= K; k += 2 * W) {
      s0 = fma(V::load(a + k), V::load(b + k), s0);
      s1 = fma(V::load(a + k + W), V::load(b + k + W), s1);
    }
    for (; k < K; k += W) s0 = fma(load_upto(a + k, K - k), load_upto(b + k, K - k), s0);
    return (s0 + s1).hsum();
  }

  template <int C>
  static void cell(const CellArgs<T>& s, int64_t unit_begin, int64_t unit_end) {
    constexpr CellShape cs = cell_shape(C);
    constexpr int G = cs.gates;
    // pre[q]: gate q's both terms and biases; GRU: pre[2] is the input term
    // of n (x W_in + b_in) and hn the recurrent one (h W_hn + b_hn).
    alignas(64) T pre[G][W], hn[W];
    for (int64_t u = unit_begin; u < unit_end; u += W) {
      const int64_t n = min64(W, unit_end - u);
      for (int64_t b = 0; b < s.B; ++b) {
        for (int q = 0; q < G; ++q)
          for (int64_t l = 0; l < W; ++l) {
            const int64_t row = q * s.H + u + l;
            if (l >= n) {
              pre[q][l] = T(0);
              if (C == kGru && q == 2) hn[l] = T(0);
              continue;
            }
            const T xs = dot(s.w_ih + row * s.I, s.x + b * s.I, s.I);
            const T hs = dot(s.w_hh + row * s.H, s.h + b * s.H, s.H);
            const T bias = s.bias ? s.bias[row] : T(0);
            if (C == kGru && q == 2) {
              pre[q][l] = xs + bias;
              hn[l] = hs + (s.bias_hn ? s.bias_hn[u + l] : T(0));
            } else {
              pre[q][l] = xs + hs + bias;
            }
          }
        V h_new;
        T* ap = s.acts ? s.acts + b * cell_step_saved(C) * s.H + u : nullptr;
        if constexpr (C == kLstm) {
          V c_new;
          const GateActs<V> act = cell_forward(V::load(pre[0]), V::load(pre[1]), V::load(pre[2]),
                                               V::load(pre[3]), load_upto(s.c + b * s.H + u, n), c_new, h_new);
          store_upto(c_new, s.c_new + b * s.H + u, n);
          if (ap) {
            store_upto(act.i, ap, n);
            store_upto(act.f, ap + s.H, n);
            store_upto(act.g, ap + 2 * s.H, n);
            store_upto(act.o, ap + 3 * s.H, n);
          }
        } else if constexpr (C == kGru) {
          const GruActs<V> act = gru_forward(V::load(pre[0]), V::load(pre[1]), V::load(pre[2]), V::load(hn),
                                             load_upto(s.h + b * s.H + u, n), h_new);
          if (ap) {
            store_upto(act.r, ap, n);
            store_upto(act.z, ap + s.H, n);
            store_upto(act.n, ap + 2 * s.H, n);
            store_upto(act.hn, ap + 3 * s.H, n);
          }
        } else {
          h_new = rnn_forward<C == kRnnRelu>(V::load(pre[0]));
          if (ap) store_upto(h_new, ap, n);
        }
        store_upto(h_new, s.h_new + b * s.H + u, n);
      }
    }
  }

  // ------------------------------------------------------ row combination
  static void combine(const CombineArgs<T>& s, int64_t col_begin, int64_t col_end) {
    constexpr int64_t kCols = 4 * W;  // four accumulators in flight per pass over the rows
    for (int64_t k0 = col_begin; k0 < col_end; k0 += kCols) {
      const int64_t n = min64(kCols, col_end - k0);
      V acc[4];
      for (int q = 0; q < 4; ++q)
        acc[q] = s.accumulate ? load_upto(s.out + k0 + q * W, n - q * W) : V(T(0));
      for (int64_t i = 0; i < s.n_rows; ++i) {
        const V a(s.coef[i * s.coef_stride]);
        const T* row = s.rows + i * s.ld + k0;
        for (int q = 0; q < 4; ++q) acc[q] = fma(a, load_upto(row + q * W, n - q * W), acc[q]);
      }
      for (int q = 0; q < 4; ++q) store_upto(acc[q], s.out + k0 + q * W, n - q * W);
    }
  }

  static TypedKernels<T> table() {
    return {W,
            &gemm,
            {&fwd_step<kLstm>, &fwd_step<kGru>, &fwd_step<kRnnTanh>, &fwd_step<kRnnRelu>, &fwd_step<kGruFedBack>},
            {&bwd_step<kLstm>, &bwd_step<kGru>, &bwd_step<kRnnTanh>, &bwd_step<kRnnRelu>, &bwd_step<kGru>},
            {&cell<kLstm>, &cell<kGru>, &cell<kRnnTanh>, &cell<kRnnRelu>, &cell<kGru>},
            &combine};
  }

  static Bf16Kernels bf16_table() {
#if defined(FL_HAVE_DPBF16)
    const char* dot = "dpbf16";
#else
    const char* dot = "emulated";
#endif
    return {dot,
            &gemm_bf16,
            &row_to_bf16,
            {&fwd_step_bf16<kLstm>, &fwd_step_bf16<kGru>, &fwd_step_bf16<kRnnTanh>, &fwd_step_bf16<kRnnRelu>,
             &fwd_step_bf16<kGruFedBack>},
            {&bwd_step_bf16<kLstm>, &bwd_step_bf16<kGru>, &bwd_step_bf16<kRnnTanh>, &bwd_step_bf16<kRnnRelu>,
             &bwd_step_bf16<kGru>}};
  }
};
