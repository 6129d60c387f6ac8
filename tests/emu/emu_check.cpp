// Runs the CUDA C API (fl_cuda_*) under CPU emulation (bench/dev/emu/run.sh)
// against the CPU C API (fl_*) in float64 on the same inputs, rounded to the
// storage dtype first: forward, backward and cell, every mode and feed,
// lengths, batch_first with padded strides, optional biases and initial
// states, in float64, float32, float16 and bfloat16. Outputs are NaN-poisoned
// before each call; fresh random inputs each run (seed printed).
//
// It checks the driver code and the fallback kernels of csrc/cuda/lstm_cuda.cu
// (indexing, strides, masks, the cuBLAS operand mapping, dtype conversions),
// not the GPU (timing, memory model, the persistent kernel, real cuBLAS).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "fusedlstm/fusedlstm.h"
#include "fusedlstm/fusedlstm_cuda.h"

namespace {

std::mt19937_64 rng;
double normal() { return std::normal_distribution<double>(0, 1)(rng); }
double uniform(double a, double b) { return std::uniform_real_distribution<double>(a, b)(rng); }

template <class S>
S to_s(double v) {
  return static_cast<S>(v);
}
template <>
__half to_s<__half>(double v) {
  return __float2half(static_cast<float>(v));
}
template <>
__nv_bfloat16 to_s<__nv_bfloat16>(double v) {
  return __float2bfloat16(static_cast<float>(v));
}
template <class S>
double from_s(S v) {
  return static_cast<double>(v);
}
template <>
double from_s<__half>(__half v) {
  return __half2float(v);
}
template <>
double from_s<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

// A buffer held both as rounded doubles (the reference's input) and as S.
template <class S>
struct Buf {
  std::vector<double> d;
  std::vector<S> s;
  bool present = true;
  explicit Buf(size_t n = 0, bool random = false, double lo = -1, double hi = 1, bool gauss = false)
      : d(n), s(n) {
    for (size_t i = 0; i < n; ++i) {
      const double v = random ? (gauss ? normal() : uniform(lo, hi)) : std::nan("");
      s[i] = to_s<S>(v);
      d[i] = from_s<S>(s[i]);
    }
  }
  const void* dp() const { return present ? d.data() : nullptr; }
  const void* sp() const { return present ? s.data() : nullptr; }
  void* dm() { return present ? d.data() : nullptr; }
  void* sm() { return present ? s.data() : nullptr; }
};

struct Errors {
  double worst = 0;
  std::string where;
  bool nan = false;
  std::string wrong_path;  // a call ran another recurrence than expected
};

// The recurrence every call of a case must run ("fallback" or "persistent";
// feed FL_FEED_OUTPUT always runs the fallback).
std::string expected_path = "fallback";

void check_path(const char* call, const char* got, const fl_feed feed, const fl_mode mode, Errors* e) {
  const std::string want = mode == FL_ONE_TO_MANY && feed == FL_FEED_OUTPUT ? "fallback" : expected_path;
  if (want != got) e->wrong_path += std::string(call) + " ran " + got + " (expected " + want + ") ";
}

template <class S>
void compare(const char* name, const Buf<S>& got, const Buf<double>& want, const std::vector<size_t>& idx,
             Errors* e) {
  double scale = 1, err = 0;
  for (size_t i : idx) scale = std::max(scale, std::fabs(want.d[i]));
  for (size_t i : idx) {
    const double g = from_s<S>(got.s[i]);
    if (std::isnan(g) && !std::isnan(want.d[i])) e->nan = true, e->where = name;
    err = std::max(err, std::fabs(g - want.d[i]));
  }
  if (err / scale > e->worst) e->worst = err / scale, e->where = name;
}

std::vector<size_t> all(size_t n) {
  std::vector<size_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = i;
  return v;
}
// Elements of a [T, B, W] array laid out with strides (st, sb, 1).
std::vector<size_t> strided(int64_t T, int64_t B, int64_t W, int64_t st, int64_t sb) {
  std::vector<size_t> v;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t b = 0; b < B; ++b)
      for (int64_t k = 0; k < W; ++k) v.push_back(size_t(t * st + b * sb + k));
  return v;
}

struct Case {
  fl_mode mode;
  fl_feed feed;
  int64_t T, B, I, H;
  bool lengths, batch_first, init;
  int bias;  // 0 none, 1 ih only, 2 both
};

template <class S>
Errors run_case(const Case& c, fl_cuda_dtype dt) {
  const int64_t T = c.T, B = c.B, I = c.I, H = c.H, G = 4 * H;
  const bool o2m = c.mode == FL_ONE_TO_MANY, m2o = c.mode == FL_MANY_TO_ONE;
  // Padded strides: rows of x, y, dy, dx are wider than the data.
  const int64_t xw = I + 2, yw = H + 1, dxw = I + 3;
  int64_t x_st, x_sb, y_st, y_sb, dx_st, dx_sb;
  if (o2m) {
    x_st = 0, x_sb = xw, dx_st = 0, dx_sb = dxw;
  } else if (c.batch_first) {
    x_st = xw, x_sb = T * xw, dx_st = dxw, dx_sb = T * dxw;
  } else {
    x_st = B * xw, x_sb = xw, dx_st = B * dxw, dx_sb = dxw;
  }
  if (c.batch_first && !o2m) y_st = yw, y_sb = T * yw;
  else y_st = B * yw, y_sb = yw;
  const size_t x_n = o2m ? B * xw : T * B * xw, y_n = T * B * yw, dx_n = o2m ? B * dxw : T * B * dxw;
  const double s = 1.5 / std::sqrt(double(H));
  Buf<S> x(x_n, true, 0, 0, true), w_ih(G * I, true, -s, s), w_hh(G * H, true, -s, s), b_ih(G, true, -.5, .5),
      b_hh(G, true, -.5, .5), h0(B * H, true, -1, 1), c0(B * H, true, 0, 0, true);
  if (c.bias < 2) b_hh.present = false;
  if (c.bias < 1) b_ih.present = false;
  if (!c.init) h0.present = c0.present = false;
  std::vector<int64_t> lens;
  if (c.lengths) {
    for (int64_t b = 0; b < B; ++b) lens.push_back(1 + int64_t(rng() % T));
    lens[1 % B] = 1;
  }
  Buf<S> dy(m2o ? B * H : y_n, true, 0, 0, true), dh_n(B * H, true, 0, 0, true), dc_n(B * H, true, 0, 0, true);
  const int64_t dy_st = m2o ? 0 : y_st, dy_sb = m2o ? H : y_sb;

  // Reference: CPU core, float64, on the rounded inputs.
  Buf<double> ry(y_n), rhn(B * H), rcn(B * H), rdx(dx_n), rdh0(B * H), rdc0(B * H), rdwih(G * I), rdwhh(G * H),
      rdb(G);
  fl_forward_params rp{};
  rp.dtype = FL_FLOAT64, rp.mode = c.mode, rp.feed = c.feed, rp.T = T, rp.B = B, rp.I = I, rp.H = H;
  rp.x = x.dp(), rp.x_stride_t = x_st, rp.x_stride_b = x_sb, rp.w_ih = w_ih.dp(), rp.w_hh = w_hh.dp();
  rp.b_ih = b_ih.dp(), rp.b_hh = b_hh.dp(), rp.h0 = h0.dp(), rp.c0 = c0.dp();
  rp.lengths = c.lengths ? lens.data() : nullptr;
  rp.y = m2o ? nullptr : ry.dm(), rp.y_stride_t = y_st, rp.y_stride_b = y_sb, rp.h_n = rhn.dm(), rp.c_n = rcn.dm();
  fl_training_state* rstate = nullptr;
  rp.state_out = &rstate;
  if (fl_lstm_forward(&rp) != FL_OK) std::printf("CPU forward failed: %s\n", fl_last_error()), std::exit(2);
  fl_backward_params rb{};
  rb.state = rstate, rb.dy = dy.dp(), rb.dy_stride_t = dy_st, rb.dy_stride_b = dy_sb, rb.dh_n = dh_n.dp();
  rb.dc_n = dc_n.dp(), rb.dx = rdx.dm(), rb.dx_stride_t = dx_st, rb.dx_stride_b = dx_sb, rb.dh0 = rdh0.dm();
  rb.dc0 = rdc0.dm(), rb.dw_ih = rdwih.dm(), rb.dw_hh = rdwhh.dm();
  rb.db = (c.bias ? rdb.dm() : nullptr);
  if (fl_lstm_backward(&rb) != FL_OK) std::printf("CPU backward failed: %s\n", fl_last_error()), std::exit(2);
  fl_training_state_free(rstate);

  // Emulated CUDA path, outputs poisoned (NaN).
  Buf<S> y(y_n), hn(B * H), cn(B * H), dx(dx_n), dh0(B * H), dc0(B * H), dwih(G * I), dwhh(G * H), db(G);
  fl_cuda_forward_params p{};
  p.dtype = dt, p.device = 0, p.stream = nullptr, p.mode = c.mode, p.feed = c.feed;
  p.T = T, p.B = B, p.I = I, p.H = H;
  p.x = x.sp(), p.x_stride_t = x_st, p.x_stride_b = x_sb, p.w_ih = w_ih.sp(), p.w_hh = w_hh.sp();
  p.b_ih = b_ih.sp(), p.b_hh = b_hh.sp(), p.h0 = h0.sp(), p.c0 = c0.sp();
  p.lengths = c.lengths ? lens.data() : nullptr;
  p.y = m2o ? nullptr : y.sm(), p.y_stride_t = y_st, p.y_stride_b = y_sb, p.h_n = hn.sm(), p.c_n = cn.sm();
  fl_cuda_training_state* st = nullptr;
  p.state_out = &st;
  if (fl_cuda_lstm_forward(&p) != FL_OK) std::printf("CUDA forward failed: %s\n", fl_cuda_last_error()), std::exit(2);
  Errors e;
  check_path("training forward", fl_cuda_last_forward_path(), c.feed, c.mode, &e);
  fl_cuda_backward_params q{};
  q.state = st, q.stream = nullptr, q.dy = dy.sp(), q.dy_stride_t = dy_st, q.dy_stride_b = dy_sb;
  q.dh_n = dh_n.sp(), q.dc_n = dc_n.sp(), q.dx = dx.sm(), q.dx_stride_t = dx_st, q.dx_stride_b = dx_sb;
  q.dh0 = dh0.sm(), q.dc0 = dc0.sm(), q.dw_ih = dwih.sm(), q.dw_hh = dwhh.sm(), q.db = c.bias ? db.sm() : nullptr;
  if (fl_cuda_lstm_backward(&q) != FL_OK)
    std::printf("CUDA backward failed: %s\n", fl_cuda_last_error()), std::exit(2);
  check_path("backward", fl_cuda_last_backward_path(), c.feed, c.mode, &e);
  fl_cuda_training_state_free(st);

  // Inference forward (other buffers: h in h_n, c in place) must agree too.
  Buf<S> y2(y_n), hn2(B * H), cn2(B * H);
  p.y = m2o ? nullptr : y2.sm(), p.h_n = hn2.sm(), p.c_n = cn2.sm(), p.state_out = nullptr;
  if (fl_cuda_lstm_forward(&p) != FL_OK) std::printf("CUDA forward failed: %s\n", fl_cuda_last_error()), std::exit(2);
  check_path("inference forward", fl_cuda_last_forward_path(), c.feed, c.mode, &e);

  const auto yi = strided(T, B, H, y_st, y_sb);
  if (!m2o) compare("y", y, ry, yi, &e), compare("y(inference)", y2, ry, yi, &e);
  compare("h_n", hn, rhn, all(B * H), &e);
  compare("c_n", cn, rcn, all(B * H), &e);
  compare("h_n(inference)", hn2, rhn, all(B * H), &e);
  compare("c_n(inference)", cn2, rcn, all(B * H), &e);
  compare("dx", dx, rdx, o2m ? strided(1, B, I, 0, dx_sb) : strided(T, B, I, dx_st, dx_sb), &e);
  compare("dh0", dh0, rdh0, all(B * H), &e);
  compare("dc0", dc0, rdc0, all(B * H), &e);
  compare("dw_ih", dwih, rdwih, all(G * I), &e);
  compare("dw_hh", dwhh, rdwhh, all(G * H), &e);
  if (c.bias) compare("db", db, rdb, all(G), &e);
  return e;
}

template <class S>
Errors run_cell(fl_cuda_dtype dt) {
  const int64_t B = 3, I = 5, H = 7, G = 4 * H;
  Buf<S> x(B * I, true, 0, 0, true), h(B * H, true, -1, 1), c(B * H, true, 0, 0, true), w_ih(G * I, true, -.5, .5),
      w_hh(G * H, true, -.5, .5), b_ih(G, true, -.5, .5), b_hh(G, true, -.5, .5), hn(B * H), cn(B * H);
  Buf<double> rh(B * H), rc(B * H);
  fl_cell_params r{};
  r.dtype = FL_FLOAT64, r.B = B, r.I = I, r.H = H, r.x = x.dp(), r.h = h.dp(), r.c = c.dp(), r.w_ih = w_ih.dp();
  r.w_hh = w_hh.dp(), r.b_ih = b_ih.dp(), r.b_hh = b_hh.dp(), r.h_new = rh.dm(), r.c_new = rc.dm();
  if (fl_lstm_cell(&r) != FL_OK) std::exit(2);
  fl_cuda_cell_params p{};
  p.dtype = dt, p.B = B, p.I = I, p.H = H, p.x = x.sp(), p.h = h.sp(), p.c = c.sp(), p.w_ih = w_ih.sp();
  p.w_hh = w_hh.sp(), p.b_ih = b_ih.sp(), p.b_hh = b_hh.sp(), p.h_new = hn.sm(), p.c_new = cn.sm();
  if (fl_cuda_lstm_cell(&p) != FL_OK) std::printf("cell failed: %s\n", fl_cuda_last_error()), std::exit(2);
  Errors e;
  compare("h_new", hn, rh, all(B * H), &e);
  compare("c_new", cn, rc, all(B * H), &e);
  return e;
}

// all_cases: every combination of the options below; else a subset (lengths
// and batch_first together, no single-bias case) for the slower fiber-emulated
// persistent kernels. large: shapes with more batch rows and units, H = 64
// giving the 16-byte staging copies in every dtype, H = 37 the element copies.
int run_config(bool large, bool all_cases) {
  int bad = 0;
  std::vector<Case> cases;
  for (int64_t shape = 0; shape < 2; ++shape) {
    int64_t T = shape ? 9 : 5, B = shape ? 5 : 3, I = shape ? 7 : 4, H = shape ? 13 : 6;
    if (large) T = shape ? 6 : 4, B = shape ? 11 : 17, I = 5, H = shape ? 64 : 37;
    for (fl_mode m : {FL_MANY_TO_MANY, FL_MANY_TO_ONE})
      for (bool len : {false, true})
        for (bool bf : {false, true})
          for (int bias : {0, 1, 2})
            for (bool init : {false, true})
              if (all_cases || (bf == len && bias != 1))
                cases.push_back({m, FL_FEED_REPEAT, T, B, I, H, len, bf, init, bias});
    for (fl_feed f : {FL_FEED_REPEAT, FL_FEED_FIRST, FL_FEED_OUTPUT})
      for (int bias : {0, 2})
        for (bool init : {false, true})
          if (all_cases || bias == 2)
            cases.push_back({FL_ONE_TO_MANY, f, T, B, f == FL_FEED_OUTPUT ? H : I, H, false, false, init, bias});
  }
  struct D {
    const char* name;
    fl_cuda_dtype dt;
    double tol;
  };
  // Normwise bounds (max abs error / max(1, max|ref|)). The emulated GEMM
  // accumulates in double, so float32 differences come from storage and the
  // pointwise math only; these are not the GPU tolerances.
  const D dtypes[] = {{"float64", FL_CUDA_FLOAT64, 1e-12}, {"float32", FL_CUDA_FLOAT32, 1e-5},
                      {"float16", FL_CUDA_FLOAT16, 1e-2}, {"bfloat16", FL_CUDA_BFLOAT16, 6e-2}};
  for (const D& d : dtypes) {
    double worst = 0;
    std::string where;
    int n = 0;
    for (const Case& c : cases) {
      Errors e;
      switch (d.dt) {
        case FL_CUDA_FLOAT64: e = run_case<double>(c, d.dt); break;
        case FL_CUDA_FLOAT32: e = run_case<float>(c, d.dt); break;
        case FL_CUDA_FLOAT16: e = run_case<__half>(c, d.dt); break;
        case FL_CUDA_BFLOAT16: e = run_case<__nv_bfloat16>(c, d.dt); break;
      }
      ++n;
      if (e.nan || e.worst > d.tol || !e.wrong_path.empty()) {
        ++bad;
        std::printf("BAD %s mode %d feed %d T%lld B%lld I%lld H%lld lengths %d batch_first %d init %d bias %d: "
                    "%s err %.3e%s %s\n",
                    d.name, c.mode, c.feed, (long long)c.T, (long long)c.B, (long long)c.I, (long long)c.H,
                    c.lengths, c.batch_first, c.init, c.bias, e.where.c_str(), e.worst, e.nan ? " (NaN)" : "",
                    e.wrong_path.c_str());
      }
      if (e.worst > worst) worst = e.worst, where = e.where;
    }
    Errors ce;
    switch (d.dt) {
      case FL_CUDA_FLOAT64: ce = run_cell<double>(d.dt); break;
      case FL_CUDA_FLOAT32: ce = run_cell<float>(d.dt); break;
      case FL_CUDA_FLOAT16: ce = run_cell<__half>(d.dt); break;
      case FL_CUDA_BFLOAT16: ce = run_cell<__nv_bfloat16>(d.dt); break;
    }
    if (ce.nan || ce.worst > d.tol) ++bad, std::printf("BAD %s cell: %s %.3e\n", d.name, ce.where.c_str(), ce.worst);
    std::printf("%-8s %3d sequence cases + cell: worst normwise error %.2e (%s), cell %.2e, bound %.0e\n", d.name, n,
                worst, where.c_str(), ce.worst, d.tol);
  }
  return bad;
}

}  // namespace

int main(int argc, char** argv) {
  const unsigned long long seed = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : std::random_device{}();
  rng.seed(seed);
  std::printf("seed %llu\n", seed);
  // Configurations: the fallback, then the persistent kernels on an emulated
  // device of 4 SMs with 227 KB of shared memory per block (several CTAs, the
  // last one partly past H) and 128 threads per CTA, then on 3 SMs with 64
  // threads (warps take several work units each) staging the shared operand
  // in chunks of 32 columns, at larger B and H.
  struct Config {
    const char* path;
    const char* sms;
    const char* kc;       // cap on the staged columns (FUSEDLSTM_EMU_KC), "0" = none
    const char* threads;  // per emulated CTA (FUSEDLSTM_EMU_THREADS)
    bool large, all_cases;
  };
  const Config configs[] = {{"fallback", "4", "0", "256", false, true},
                            {"persistent", "4", "0", "128", false, false},
                            {"persistent", "3", "32", "64", true, false}};
  int bad = 0;
  for (const Config& cfg : configs) {
    setenv("FUSEDLSTM_CUDA_PATH", cfg.path, 1);
    setenv("FUSEDLSTM_EMU_SMS", cfg.sms, 1);
    setenv("FUSEDLSTM_EMU_KC", cfg.kc, 1);
    setenv("FUSEDLSTM_EMU_THREADS", cfg.threads, 1);
    expected_path = cfg.path;
    std::printf("-- %s path, %s emulated SMs, %s threads per CTA%s%s\n", cfg.path, cfg.sms, cfg.threads,
                cfg.large ? ", chunked staging" : "", cfg.all_cases ? "" : ", a subset of the cases");
    bad += run_config(cfg.large, cfg.all_cases);
  }
  std::printf("%d failures\n", bad);
  return bad ? 1 : 0;
}
