/* Embedding fusedlstm in C: one LSTM layer, float32, sequences of different
 * lengths, a training forward (fl_lstm_forward keeping a training state) and
 * its backward (fl_lstm_backward). Prints every input and output as
 *   name ndim dim... value...
 * one array a line, so tests/test_embed.py can check them against
 * fusedlstm.reference (the float64 numpy reference). Exit status 1 on an error. */
#include <fusedlstm/fusedlstm.h>

#include <stdio.h>
#include <stdlib.h>

enum { T = 7, B = 3, I = 5, H = 4, G = 4 /* LSTM gates i, f, g, o */ };

/* Deterministic inputs in [-0.5, 0.5): a 32-bit linear congruential generator. */
static unsigned int state = 12345u;
static void fill(float* a, int n) {
  for (int k = 0; k < n; ++k) {
    state = state * 1664525u + 1013904223u;
    a[k] = (float)((state >> 8) * (1.0 / 16777216.0) - 0.5);
  }
}

static void print(const char* name, const float* a, int ndim, const int* dims) {
  int n = 1;
  printf("%s %d", name, ndim);
  for (int d = 0; d < ndim; ++d) {
    printf(" %d", dims[d]);
    n *= dims[d];
  }
  for (int k = 0; k < n; ++k) printf(" %.9g", a[k]);
  printf("\n");
}

static int check(fl_status status, const char* what) {
  if (status == FL_OK) return 0;
  fprintf(stderr, "%s failed (status %d): %s\n", what, (int)status, fl_last_error());
  return 1;
}

int main(void) {
  static float x[T * B * I], w_ih[G * H * I], w_hh[G * H * H], b_ih[G * H], b_hh[G * H];
  static float h0[B * H], c0[B * H], y[T * B * H], h_n[B * H], c_n[B * H];
  static float dy[T * B * H], dh_n[B * H], dc_n[B * H];
  static float dx[T * B * I], dh0[B * H], dc0[B * H], dw_ih[G * H * I], dw_hh[G * H * H], db[G * H];
  int64_t lengths[B] = {T, 2, 5}; /* sequence b ends after lengths[b] steps */
  fill(x, T * B * I);
  fill(w_ih, G * H * I);
  fill(w_hh, G * H * H);
  fill(b_ih, G * H);
  fill(b_hh, G * H);
  fill(h0, B * H);
  fill(c0, B * H);
  fill(dy, T * B * H);
  fill(dh_n, B * H);
  fill(dc_n, B * H);

  /* Forward: x [T, B, I] and y [T, B, H] are contiguous, time-major. Zero
   * initialisation gives the defaults: the LSTM cell, the CPU, many_to_many. */
  fl_training_state* saved = NULL;
  fl_forward_params f = {0};
  f.dtype = FL_FLOAT32;
  f.mode = FL_MANY_TO_MANY;
  f.T = T, f.B = B, f.I = I, f.H = H;
  f.x = x, f.x_stride_t = B * I, f.x_stride_b = I;
  f.w_ih = w_ih, f.w_hh = w_hh, f.b_ih = b_ih, f.b_hh = b_hh;
  f.h0 = h0, f.c0 = c0, f.lengths = lengths;
  f.y = y, f.y_stride_t = B * H, f.y_stride_b = H;
  f.h_n = h_n, f.c_n = c_n;
  f.state_out = &saved; /* training: keep what the backward needs */
  if (check(fl_lstm_forward(&f), "fl_lstm_forward")) return 1;

  /* Backward through time from the upstream gradients dy, dh_n, dc_n. */
  fl_backward_params g = {0};
  g.state = saved;
  g.dy = dy, g.dy_stride_t = B * H, g.dy_stride_b = H;
  g.dh_n = dh_n, g.dc_n = dc_n;
  g.dx = dx, g.dx_stride_t = B * I, g.dx_stride_b = I;
  g.dh0 = dh0, g.dc0 = dc0, g.dw_ih = dw_ih, g.dw_hh = dw_hh, g.db = db;
  const int failed = check(fl_lstm_backward(&g), "fl_lstm_backward");
  fl_training_state_free(saved);
  if (failed) return 1;

  const int tbi[] = {T, B, I}, tbh[] = {T, B, H}, bh[] = {B, H}, gh_i[] = {G * H, I}, gh_h[] = {G * H, H},
            gh[] = {G * H};
  printf("lengths 1 %d", B);
  for (int b = 0; b < B; ++b) printf(" %lld", (long long)lengths[b]);
  printf("\n");
  print("x", x, 3, tbi), print("w_ih", w_ih, 2, gh_i), print("w_hh", w_hh, 2, gh_h);
  print("b_ih", b_ih, 1, gh), print("b_hh", b_hh, 1, gh), print("h0", h0, 2, bh), print("c0", c0, 2, bh);
  print("dy", dy, 3, tbh), print("dh_n", dh_n, 2, bh), print("dc_n", dc_n, 2, bh);
  print("y", y, 3, tbh), print("h_n", h_n, 2, bh), print("c_n", c_n, 2, bh);
  print("dx", dx, 3, tbi), print("dh0", dh0, 2, bh), print("dc0", dc0, 2, bh);
  print("dw_ih", dw_ih, 2, gh_i), print("dw_hh", dw_hh, 2, gh_h), print("db", db, 1, gh);
  return 0;
}
