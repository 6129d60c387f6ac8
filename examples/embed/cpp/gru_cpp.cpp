// Embedding fusedlstm in C++: the C API (fusedlstm.h) behind a few lines of
// RAII and exceptions. One GRU layer (nn.GRU's math and weights), float64, the
// reverse direction over sequences of different lengths, a training forward
// and its backward. Prints every input and output as
//   name ndim dim... value...
// one array a line, so tests/test_embed.py can check them against
// fusedlstm.reference. Exit status 1 on an error.
#include <fusedlstm/fusedlstm.h>

#include <cstdint>
#include <cstdio>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

// A failed call becomes an exception carrying fusedlstm's message.
void check(fl_status status, const char* what) {
  if (status != FL_OK) throw std::runtime_error(std::string(what) + ": " + fl_last_error());
}

// The saved activations of a training forward, freed when it goes out of scope.
struct StateFree {
  void operator()(fl_training_state* s) const { fl_training_state_free(s); }
};
using TrainingState = std::unique_ptr<fl_training_state, StateFree>;

struct Array {
  std::vector<int64_t> dims;
  std::vector<double> v;
  explicit Array(std::vector<int64_t> shape) : dims(std::move(shape)) {
    int64_t n = 1;
    for (int64_t d : dims) n *= d;
    v.assign(static_cast<size_t>(n), 0.0);
  }
  double* data() { return v.data(); }
  void print(const char* name) const {
    std::printf("%s %zu", name, dims.size());
    for (int64_t d : dims) std::printf(" %lld", static_cast<long long>(d));
    for (double a : v) std::printf(" %.17g", a);
    std::printf("\n");
  }
};

}  // namespace

int main() {
  constexpr int64_t T = 6, B = 4, I = 3, H = 5, G = 3;  // GRU gates r, z, n
  std::mt19937_64 gen(2024);
  std::uniform_real_distribution<double> uniform(-0.5, 0.5);
  auto random = [&](std::vector<int64_t> shape) {
    Array a(std::move(shape));
    for (double& e : a.v) e = uniform(gen);
    return a;
  };
  Array x = random({T, B, I}), w_ih = random({G * H, I}), w_hh = random({G * H, H});
  Array b_ih = random({G * H}), b_hh = random({G * H}), h0 = random({B, H});
  Array dy = random({T, B, H}), dh_n = random({B, H});
  std::vector<int64_t> lengths = {T, 1, 4, 3};
  Array y({T, B, H}), h_n({B, H});
  Array dx({T, B, I}), dh0({B, H}), dw_ih({G * H, I}), dw_hh({G * H, H}), db_ih({G * H}), db_hh({G * H});

  try {
    fl_forward_params f{};  // zero: the CPU, many_to_many
    f.cell = FL_CELL_GRU;
    f.dtype = FL_FLOAT64;
    f.T = T, f.B = B, f.I = I, f.H = H;
    f.reverse = 1;  // each sequence from its own last step back to step 0
    f.x = x.data(), f.x_stride_t = B * I, f.x_stride_b = I;
    f.w_ih = w_ih.data(), f.w_hh = w_hh.data(), f.b_ih = b_ih.data(), f.b_hh = b_hh.data();
    f.h0 = h0.data(), f.lengths = lengths.data();
    f.y = y.data(), f.y_stride_t = B * H, f.y_stride_b = H;
    f.h_n = h_n.data();  // no c_n: the GRU has no cell state
    fl_training_state* raw = nullptr;
    f.state_out = &raw;
    check(fl_lstm_forward(&f), "fl_lstm_forward");
    TrainingState saved(raw);

    fl_backward_params g{};
    g.state = saved.get();
    g.dy = dy.data(), g.dy_stride_t = B * H, g.dy_stride_b = H;
    g.dh_n = dh_n.data();
    g.dx = dx.data(), g.dx_stride_t = B * I, g.dx_stride_b = I;
    g.dh0 = dh0.data(), g.dw_ih = dw_ih.data(), g.dw_hh = dw_hh.data();
    g.db = db_ih.data(), g.db_hh = db_hh.data();  // they differ for the GRU (the n rows)
    check(fl_lstm_backward(&g), "fl_lstm_backward");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }

  std::printf("lengths 1 %lld", static_cast<long long>(B));
  for (int64_t n : lengths) std::printf(" %lld", static_cast<long long>(n));
  std::printf("\n");
  x.print("x"), w_ih.print("w_ih"), w_hh.print("w_hh"), b_ih.print("b_ih"), b_hh.print("b_hh");
  h0.print("h0"), dy.print("dy"), dh_n.print("dh_n");
  y.print("y"), h_n.print("h_n");
  dx.print("dx"), dh0.print("dh0"), dw_ih.print("dw_ih"), dw_hh.print("dw_hh");
  db_ih.print("db_ih"), db_hh.print("db_hh");
  return 0;
}
