/* The C API under hostile input: NULL pointers, zero, negative and
 * overflowing sizes (INT64_MAX, products that wrap to small numbers), bad
 * enum values, overflowing strides, short reserves. Every case must return a
 * non-OK status with a message that names the argument, never crash, and
 * leave *state_out NULL. A small valid forward/backward of each kind of entry
 * point proves the harness is live. Plain C, fusedlstm.h only; the last line
 * reads "N passed, M failed" and the exit status is nonzero when M > 0.
 * Built by CMake (target fusedlstm_capi_test), run by tests/test_capi_c.py. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fusedlstm/fusedlstm.h"
#include "fusedlstm/fusedlstm_cuda.h"

static int passed, failed;

static void fail(const char* name, const char* why, const char* msg) {
  ++failed;
  printf("FAIL %s: %s (message: \"%s\")\n", name, why, msg ? msg : "(null)");
}

static int is_word_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}

/* word occurs in msg with no letter, digit or '_' on either side. */
static int names(const char* msg, const char* word) {
  const size_t n = strlen(word);
  for (const char* at = strstr(msg, word); at; at = strstr(at + 1, word))
    if ((at == msg || !is_word_char(at[-1])) && !is_word_char(at[n])) return 1;
  return 0;
}

/* A call that must fail: non-OK status `want` (or any non-OK status when
 * want is FL_OK), a message naming `word` (when non-NULL). */
static void expect_failure(const char* name, fl_status got, fl_status want, const char* word) {
  const char* msg = fl_last_error();
  char why[160];
  if (got == FL_OK) return fail(name, "returned FL_OK", msg);
  if (want != FL_OK && got != want) {
    snprintf(why, sizeof why, "status %d, expected %d", (int)got, (int)want);
    return fail(name, why, msg);
  }
  if (!msg || !*msg) return fail(name, "empty message", msg);
  if (word && !names(msg, word)) {
    snprintf(why, sizeof why, "message does not name '%s'", word);
    return fail(name, why, msg);
  }
  ++passed;
}

static void expect_ok(const char* name, fl_status got) {
  if (got != FL_OK) return fail(name, "did not return FL_OK", fl_last_error());
  if (fl_last_error()[0] != '\0') return fail(name, "FL_OK left a message behind", fl_last_error());
  ++passed;
}

static void expect_true(const char* name, int ok) {
  if (!ok) return fail(name, "condition false", "");
  ++passed;
}

/* ------------------------------------------------------------ valid inputs */
enum { T = 3, B = 2, I = 3, H = 4, R = 2, L = 2, D = 2 };

static double x[T * B * I], w_ih[4 * H * I], w_hh[4 * H * H], b_ih[4 * H], b_hh[4 * H], h0[B * H], c0[B * H];
static double y[T * B * H], h_n[B * H], c_n[B * H];
static double dy[T * B * H], dx[T * B * I], dh0[B * H], dc0[B * H], dw_ih[4 * H * I], dw_hh[4 * H * H], db[4 * H];
static double acts[B * 4 * H];
static int64_t lengths[B] = {T, 1};

static void fill(double* a, int n, double scale) {
  for (int i = 0; i < n; ++i) a[i] = scale * sin(0.7 * i + 0.3);
}

static fl_forward_params valid_forward(fl_training_state** state_out) {
  fl_forward_params p;
  memset(&p, 0, sizeof p);
  p.dtype = FL_FLOAT64;
  p.mode = FL_MANY_TO_MANY;
  p.feed = FL_FEED_REPEAT;
  p.T = T, p.B = B, p.I = I, p.H = H;
  p.x = x, p.x_stride_t = B * I, p.x_stride_b = I;
  p.w_ih = w_ih, p.w_hh = w_hh, p.b_ih = b_ih, p.b_hh = b_hh, p.h0 = h0, p.c0 = c0;
  p.lengths = lengths;
  p.y = y, p.y_stride_t = B * H, p.y_stride_b = H;
  p.h_n = h_n, p.c_n = c_n;
  p.state_out = state_out;
  return p;
}

static fl_backward_params valid_backward(const fl_training_state* st) {
  fl_backward_params g;
  memset(&g, 0, sizeof g);
  g.state = st;
  g.dy = dy, g.dy_stride_t = B * H, g.dy_stride_b = H;
  g.dx = dx, g.dx_stride_t = B * I, g.dx_stride_b = I;
  g.dh0 = dh0, g.dc0 = dc0, g.dw_ih = dw_ih, g.dw_hh = dw_hh, g.db = db;
  return g;
}

static fl_cell_params valid_cell(void) {
  fl_cell_params c;
  memset(&c, 0, sizeof c);
  c.dtype = FL_FLOAT64;
  c.B = B, c.I = I, c.H = H;
  c.x = x, c.h = h0, c.c = c0, c.w_ih = w_ih, c.w_hh = w_hh, c.b_ih = b_ih, c.b_hh = b_hh;
  c.h_new = h_n, c.c_new = c_n, c.acts = acts;
  return c;
}

static fl_cell_backward_params valid_cell_backward(void) {
  fl_cell_backward_params c;
  memset(&c, 0, sizeof c);
  c.dtype = FL_FLOAT64;
  c.B = B, c.I = I, c.H = H;
  c.x = x, c.h = h0, c.c = c0, c.w_ih = w_ih, c.w_hh = w_hh, c.acts = acts, c.c_new = c_n;
  c.dh_new = dh0, c.dc_new = dc0;
  c.dx = dx, c.dh = dh0, c.dc = dc0, c.dw_ih = dw_ih, c.dw_hh = dw_hh, c.db = db;
  return c;
}

/* Stacks: L layers, D directions, projection R; layer l >= 1 reads D*R. */
static double s_w_ih0[4 * H * I], s_w_ih1[4 * H * D * R], s_w_hh[4 * H * R], s_w_hr[R * H], s_b[4 * H];
static double s_y[T * B * D * R], s_h[L * D * B * R], s_c[L * D * B * H];
static double s_dx[T * B * I], s_dh0[L * D * B * R], s_dc0[L * D * B * H], s_dy[T * B * D * R];
static double s_dw_ih[L * D][4 * H * D * R], s_dw_hh[L * D][4 * H * R], s_dw_hr[L * D][R * H], s_db[L * D][4 * H];
static const void *s_w_ih_ptrs[L * D], *s_w_hh_ptrs[L * D], *s_w_hr_ptrs[L * D], *s_b_ptrs[L * D];
static void *s_dw_ih_ptrs[L * D], *s_dw_hh_ptrs[L * D], *s_dw_hr_ptrs[L * D], *s_db_ptrs[L * D];
static unsigned char reserve[1 << 20];

static fl_stack_params valid_stack(void) {
  fl_stack_params p;
  memset(&p, 0, sizeof p);
  for (int i = 0; i < L * D; ++i) {
    s_w_ih_ptrs[i] = i < D ? (const void*)s_w_ih0 : (const void*)s_w_ih1;
    s_w_hh_ptrs[i] = s_w_hh, s_w_hr_ptrs[i] = s_w_hr, s_b_ptrs[i] = s_b;
    s_dw_ih_ptrs[i] = s_dw_ih[i], s_dw_hh_ptrs[i] = s_dw_hh[i], s_dw_hr_ptrs[i] = s_dw_hr[i], s_db_ptrs[i] = s_db[i];
  }
  p.dtype = FL_FLOAT64;
  p.T = T, p.B = B, p.I = I, p.H = H, p.proj_size = R, p.num_layers = L, p.num_directions = D;
  p.x = x, p.x_stride_t = B * I, p.x_stride_b = I;
  p.lengths = lengths;
  p.w_ih = s_w_ih_ptrs, p.w_hh = s_w_hh_ptrs, p.b_ih = s_b_ptrs, p.b_hh = s_b_ptrs, p.w_hr = s_w_hr_ptrs;
  p.y = s_y, p.y_stride_t = B * D * R, p.y_stride_b = D * R;
  p.h_n = s_h, p.c_n = s_c;
  return p;
}

static fl_stack_grads valid_grads(void) {
  fl_stack_grads g;
  memset(&g, 0, sizeof g);
  g.dy = s_dy, g.dy_stride_t = B * D * R, g.dy_stride_b = D * R;
  g.dx = s_dx, g.dx_stride_t = B * I, g.dx_stride_b = I;
  g.dh0 = s_dh0, g.dc0 = s_dc0;
  g.dw_ih = s_dw_ih_ptrs, g.dw_hh = s_dw_hh_ptrs, g.dw_hr = s_dw_hr_ptrs, g.db = s_db_ptrs;
  return g;
}

static int all_finite(const double* a, int n) {
  for (int i = 0; i < n; ++i)
    if (!isfinite(a[i])) return 0;
  return 1;
}

/* ------------------------------------------------------------ the cases */
#define BIG INT64_MAX
#define TWO32 ((int64_t)1 << 32) /* TWO32 * TWO32 wraps to 0 */

static fl_training_state* const kSentinel = (fl_training_state*)&passed;

/* A training forward that must fail: status, message naming word, and
 * *state_out NULL afterwards (it starts as a non-NULL sentinel). */
static void forward_fails(const char* name, fl_forward_params p, fl_status want, const char* word) {
  fl_training_state* st = kSentinel;
  p.state_out = &st;
  expect_failure(name, fl_lstm_forward(&p), want, word);
  if (st != NULL) {
    fail(name, "*state_out is not NULL after a failure", "");
    if (st != kSentinel) fl_training_state_free(st);
  }
  /* The inference path fails the same way; not for an allocation that fails
   * (inference allocates other arrays, and a sanitizer's allocator aborts on
   * a failed operator new). */
  if (want == FL_OUT_OF_MEMORY) return;
  p.state_out = NULL;
  char inference[128];
  snprintf(inference, sizeof inference, "%s (inference)", name);
  expect_failure(inference, fl_lstm_forward(&p), FL_OK, word);
}

static void forward_cases(void) {
  fl_forward_params p;
  expect_failure("forward: params NULL", fl_lstm_forward(NULL), FL_INVALID_ARGUMENT, "params");

#define CASE(name, change, want, word) \
  do {                                 \
    p = valid_forward(NULL);           \
    change;                            \
    forward_fails(name, p, want, word); \
  } while (0)
  CASE("forward: dtype 7", p.dtype = (fl_dtype)7, FL_INVALID_ARGUMENT, "dtype");
  CASE("forward: dtype -1", p.dtype = (fl_dtype)-1, FL_INVALID_ARGUMENT, "dtype");
  CASE("forward: mode 7", p.mode = (fl_mode)7, FL_INVALID_ARGUMENT, "mode");
  CASE("forward: mode -1", p.mode = (fl_mode)-1, FL_INVALID_ARGUMENT, "mode");
  CASE("forward: feed 7", (p.mode = FL_ONE_TO_MANY, p.lengths = NULL, p.feed = (fl_feed)7), FL_INVALID_ARGUMENT,
       "feed");
  CASE("forward: feed -1", (p.mode = FL_ONE_TO_MANY, p.lengths = NULL, p.feed = (fl_feed)-1), FL_INVALID_ARGUMENT,
       "feed");
  CASE("forward: feed output, I != H", (p.mode = FL_ONE_TO_MANY, p.lengths = NULL, p.feed = FL_FEED_OUTPUT),
       FL_INVALID_ARGUMENT, "I");
  CASE("forward: one_to_many with lengths", (p.mode = FL_ONE_TO_MANY), FL_INVALID_ARGUMENT, "lengths");
  CASE("forward: T 0", p.T = 0, FL_INVALID_ARGUMENT, "T");
  CASE("forward: T -1", p.T = -1, FL_INVALID_ARGUMENT, "T");
  CASE("forward: B 0", p.B = 0, FL_INVALID_ARGUMENT, "B");
  CASE("forward: B -3", p.B = -3, FL_INVALID_ARGUMENT, "B");
  CASE("forward: I 0", p.I = 0, FL_INVALID_ARGUMENT, "I");
  CASE("forward: I INT64_MIN", p.I = INT64_MIN, FL_INVALID_ARGUMENT, "I");
  CASE("forward: H 0", p.H = 0, FL_INVALID_ARGUMENT, "H");
  CASE("forward: H -1", p.H = -1, FL_INVALID_ARGUMENT, "H");
  CASE("forward: proj_size -1", p.proj_size = -1, FL_INVALID_ARGUMENT, "proj_size");
  CASE("forward: proj_size H", p.proj_size = H, FL_INVALID_ARGUMENT, "proj_size");
  CASE("forward: proj_size without w_hr", p.proj_size = 1, FL_INVALID_ARGUMENT, "w_hr");
  CASE("forward: x NULL", p.x = NULL, FL_INVALID_ARGUMENT, "x");
  CASE("forward: w_ih NULL", p.w_ih = NULL, FL_INVALID_ARGUMENT, "w_ih");
  CASE("forward: w_hh NULL", p.w_hh = NULL, FL_INVALID_ARGUMENT, "w_hh");
  CASE("forward: h_n NULL", p.h_n = NULL, FL_INVALID_ARGUMENT, "h_n");
  CASE("forward: c_n NULL", p.c_n = NULL, FL_INVALID_ARGUMENT, "c_n");
  lengths[1] = 0;
  CASE("forward: lengths[1] 0", (void)0, FL_INVALID_ARGUMENT, "lengths");
  lengths[1] = T + 1;
  CASE("forward: lengths[1] T+1", (void)0, FL_INVALID_ARGUMENT, "lengths");
  lengths[1] = 1;
  /* The reported crash: many_to_one, huge T, B = I = H = 1, zero strides. */
  CASE("forward: many_to_one T INT64_MAX zero strides",
       (p.mode = FL_MANY_TO_ONE, p.T = BIG, p.B = p.I = p.H = 1, p.x_stride_t = p.x_stride_b = 0, p.lengths = NULL,
        p.y = NULL),
       FL_INVALID_ARGUMENT, "overflows");
  CASE("forward: T*B wraps to 0", (p.T = TWO32, p.B = TWO32, p.I = p.H = 1, p.x_stride_t = p.x_stride_b = 0,
                                   p.lengths = NULL, p.y = NULL, p.h0 = p.c0 = NULL),
       FL_INVALID_ARGUMENT, "overflows");
  CASE("forward: H INT64_MAX/4", (p.H = BIG / 4, p.y = NULL), FL_INVALID_ARGUMENT, "H");
  CASE("forward: I*H wraps", (p.I = TWO32, p.H = TWO32 / 4, p.y = NULL, p.x_stride_t = p.x_stride_b = 0),
       FL_INVALID_ARGUMENT, "overflows");
  CASE("forward: x_stride_t INT64_MAX", p.x_stride_t = BIG, FL_INVALID_ARGUMENT, "x_stride_t");
  CASE("forward: x_stride_b INT64_MIN", p.x_stride_b = INT64_MIN, FL_INVALID_ARGUMENT, "x_stride_b");
  CASE("forward: y_stride_t -INT64_MAX", p.y_stride_t = -BIG, FL_INVALID_ARGUMENT, "y_stride_t");
  CASE("forward: y_stride_b INT64_MAX/2", p.y_stride_b = BIG / 2, FL_INVALID_ARGUMENT, "y_stride_b");
  /* Sizes that do not overflow but cannot be allocated: out of memory,
   * saying what and how many bytes; nothing written through the state. */
  CASE("forward: T 2^40 zero strides (out of memory)",
       (p.mode = FL_MANY_TO_ONE, p.T = (int64_t)1 << 40, p.B = p.I = p.H = 1, p.x_stride_t = p.x_stride_b = 0,
        p.lengths = NULL, p.y = NULL, p.h0 = p.c0 = NULL),
       FL_OUT_OF_MEMORY, "bytes");
  /* The device fields: read as raw ints, checked before any array. */
  CASE("forward: device.type 7", p.device.type = (fl_device_type)7, FL_INVALID_ARGUMENT, "device.type");
  CASE("forward: CPU device.index 1", p.device.index = 1, FL_INVALID_ARGUMENT, "device.index");
  CASE("forward: CPU device.stream set", p.device.stream = &passed, FL_INVALID_ARGUMENT, "device.stream");
  CASE("forward: CPU float16", p.dtype = FL_FLOAT16, FL_INVALID_ARGUMENT, "CUDA");
  CASE("forward: CUDA device.index -1", (p.device.type = FL_DEVICE_CUDA, p.device.index = -1), FL_INVALID_ARGUMENT,
       "device.index");
#undef CASE
}

static void backward_cases(void) {
  fl_backward_params g;
  expect_failure("backward: params NULL", fl_lstm_backward(NULL), FL_INVALID_ARGUMENT, "params");
  g = valid_backward(NULL);
  expect_failure("backward: state NULL", fl_lstm_backward(&g), FL_INVALID_ARGUMENT, "state");

  fl_training_state* st = NULL;
  fl_forward_params p = valid_forward(&st);
  expect_ok("backward: its forward", fl_lstm_forward(&p));
  if (!st) return fail("backward: its forward", "no state", "");
#define CASE(name, change, word)                                        \
  do {                                                                  \
    g = valid_backward(st);                                             \
    change;                                                             \
    expect_failure(name, fl_lstm_backward(&g), FL_INVALID_ARGUMENT, word); \
  } while (0)
  CASE("backward: dx NULL", g.dx = NULL, "dx");
  CASE("backward: dh0 NULL", g.dh0 = NULL, "dh0");
  CASE("backward: dc0 NULL", g.dc0 = NULL, "dc0");
  CASE("backward: dw_ih NULL", g.dw_ih = NULL, "dw_ih");
  CASE("backward: dw_hh NULL", g.dw_hh = NULL, "dw_hh");
  CASE("backward: dx_stride_t INT64_MAX", g.dx_stride_t = BIG, "dx_stride_t");
  CASE("backward: dx_stride_b INT64_MIN", g.dx_stride_b = INT64_MIN, "dx_stride_b");
  CASE("backward: dy_stride_t -INT64_MAX", g.dy_stride_t = -BIG, "dy_stride_t");
#undef CASE
  fl_training_state_free(st);
}

static void cell_cases(void) {
  fl_cell_params c;
  fl_cell_backward_params cb;
  expect_failure("cell: params NULL", fl_lstm_cell(NULL), FL_INVALID_ARGUMENT, "params");
  expect_failure("cell_backward: params NULL", fl_lstm_cell_backward(NULL), FL_INVALID_ARGUMENT, "params");
#define CASE(name, change, word)                                           \
  do {                                                                     \
    c = valid_cell();                                                      \
    cb = valid_cell_backward();                                            \
    change;                                                                \
    expect_failure("cell: " name, fl_lstm_cell(&c), FL_INVALID_ARGUMENT, word); \
    expect_failure("cell_backward: " name, fl_lstm_cell_backward(&cb), FL_INVALID_ARGUMENT, word); \
  } while (0)
  CASE("dtype 7", (c.dtype = cb.dtype = (fl_dtype)7), "dtype");
  CASE("dtype -1", (c.dtype = cb.dtype = (fl_dtype)-1), "dtype");
  CASE("B 0", (c.B = cb.B = 0), "B");
  CASE("I -1", (c.I = cb.I = -1), "I");
  CASE("H 0", (c.H = cb.H = 0), "H");
  CASE("H INT64_MAX", (c.H = cb.H = BIG), "H");
  CASE("B*H wraps", (c.B = cb.B = TWO32, c.H = cb.H = TWO32 / 4), "overflows");
  CASE("x NULL", (c.x = cb.x = NULL), "x");
  CASE("w_hh NULL", (c.w_hh = cb.w_hh = NULL), "w_hh");
#undef CASE
  c = valid_cell();
  c.h_new = NULL;
  expect_failure("cell: h_new NULL", fl_lstm_cell(&c), FL_INVALID_ARGUMENT, "h_new");
  cb = valid_cell_backward();
  cb.acts = NULL;
  expect_failure("cell_backward: acts NULL", fl_lstm_cell_backward(&cb), FL_INVALID_ARGUMENT, "acts");
  cb = valid_cell_backward();
  cb.dw_ih = NULL;
  expect_failure("cell_backward: dw_ih NULL", fl_lstm_cell_backward(&cb), FL_INVALID_ARGUMENT, "dw_ih");
}

static void reserve_bytes_fails(const char* name, fl_stack_params p, const char* word) {
  const int64_t got = fl_lstm_stack_reserve_bytes(&p);
  if (got != -1) {
    char why[96];
    snprintf(why, sizeof why, "returned %lld, expected -1", (long long)got);
    return fail(name, why, fl_last_error());
  }
  expect_failure(name, FL_INVALID_ARGUMENT, FL_INVALID_ARGUMENT, word);
}

static void stack_cases(void) {
  fl_stack_params p;
  fl_stack_grads g;
  const int64_t need = (p = valid_stack(), fl_lstm_stack_reserve_bytes(&p));
  expect_true("stack: reserve_bytes of valid shapes is positive and fits the test's buffer",
              need > 0 && need <= (int64_t)sizeof reserve);

  if (fl_lstm_stack_reserve_bytes(NULL) != -1) fail("stack reserve_bytes: params NULL", "did not return -1", "");
  else expect_failure("stack reserve_bytes: params NULL", FL_INVALID_ARGUMENT, FL_INVALID_ARGUMENT, "params");
#define CASE(name, change, word) \
  do {                           \
    p = valid_stack();           \
    change;                      \
    reserve_bytes_fails("stack reserve_bytes: " name, p, word); \
  } while (0)
  CASE("dtype 7", p.dtype = (fl_dtype)7, "dtype");
  CASE("dtype -1", p.dtype = (fl_dtype)-1, "dtype");
  CASE("T 0", p.T = 0, "T");
  CASE("B -1", p.B = -1, "B");
  CASE("H 0", p.H = 0, "H");
  CASE("proj_size H", p.proj_size = H, "proj_size");
  CASE("num_layers 0", p.num_layers = 0, "num_layers");
  CASE("num_directions 3", p.num_directions = 3, "num_directions");
  CASE("T INT64_MAX", p.T = BIG, "overflows");
  CASE("T 2^56 (wraps the closed form)", p.T = (int64_t)1 << 56, "overflows");
  CASE("T*B wraps to 0", (p.T = TWO32, p.B = TWO32), "overflows");
  CASE("num_layers INT64_MAX", p.num_layers = BIG, "overflows");
  CASE("num_layers 2^62 (L*D wraps)", p.num_layers = (int64_t)1 << 62, "overflows");
#undef CASE

  expect_failure("stack forward: params NULL", fl_lstm_stack_forward(NULL, reserve, need), FL_INVALID_ARGUMENT,
                 "params");
#define CASE(name, change, word)                                                                   \
  do {                                                                                             \
    p = valid_stack();                                                                             \
    change;                                                                                        \
    expect_failure("stack forward: " name, fl_lstm_stack_forward(&p, reserve, need), FL_INVALID_ARGUMENT, word); \
  } while (0)
  CASE("dtype 7", p.dtype = (fl_dtype)7, "dtype");
  CASE("I 0", p.I = 0, "I");
  CASE("num_layers -1", p.num_layers = -1, "num_layers");
  CASE("num_directions 0", p.num_directions = 0, "num_directions");
  CASE("T INT64_MAX zero strides", (p.T = BIG, p.x_stride_t = 0, p.y = NULL), "overflows");
  CASE("x NULL", p.x = NULL, "x");
  CASE("w_ih NULL", p.w_ih = NULL, "w_ih");
  CASE("h_n NULL", p.h_n = NULL, "h_n");
  CASE("w_hr NULL", p.w_hr = NULL, "w_hr");
  CASE("x_stride_t INT64_MAX", p.x_stride_t = BIG, "x_stride_t");
  CASE("y_stride_b INT64_MIN", p.y_stride_b = INT64_MIN, "y_stride_b");
  lengths[0] = T + 1;
  CASE("lengths[0] T+1", (void)0, "lengths");
  lengths[0] = T;
#undef CASE
  p = valid_stack();
  expect_failure("stack forward: short reserve", fl_lstm_stack_forward(&p, reserve, need - 1), FL_INVALID_ARGUMENT,
                 "reserve_bytes");
  expect_failure("stack forward: negative reserve_bytes", fl_lstm_stack_forward(&p, reserve, -1),
                 FL_INVALID_ARGUMENT, "reserve_bytes");

  g = valid_grads();
  expect_failure("stack backward: params NULL", fl_lstm_stack_backward(NULL, reserve, need, &g), FL_INVALID_ARGUMENT,
                 "params");
  expect_failure("stack backward: grads NULL", fl_lstm_stack_backward(&p, reserve, need, NULL), FL_INVALID_ARGUMENT,
                 "grads");
  expect_failure("stack backward: reserve NULL", fl_lstm_stack_backward(&p, NULL, need, &g), FL_INVALID_ARGUMENT,
                 "reserve");
  expect_failure("stack backward: short reserve", fl_lstm_stack_backward(&p, reserve, need - 1, &g),
                 FL_INVALID_ARGUMENT, "reserve_bytes");
#define CASE(name, change, word)                                                                        \
  do {                                                                                                  \
    p = valid_stack();                                                                                  \
    g = valid_grads();                                                                                  \
    change;                                                                                             \
    expect_failure("stack backward: " name, fl_lstm_stack_backward(&p, reserve, need, &g), FL_INVALID_ARGUMENT, \
                   word);                                                                               \
  } while (0)
  CASE("dtype -1", p.dtype = (fl_dtype)-1, "dtype");
  CASE("dx NULL", g.dx = NULL, "dx");
  CASE("dw_hr NULL", g.dw_hr = NULL, "dw_hr");
  CASE("dx_stride_b INT64_MAX", g.dx_stride_b = BIG, "dx_stride_b");
  CASE("dy_stride_t INT64_MIN", g.dy_stride_t = INT64_MIN, "dy_stride_t");
  CASE("T*B wraps to 0", (p.T = TWO32, p.B = TWO32, p.x_stride_t = p.x_stride_b = 0, p.y = NULL, g.dy = NULL,
                          g.dx_stride_t = g.dx_stride_b = 0, p.lengths = NULL),
       "overflows");
#undef CASE
}

static void misc_cases(void) {
  expect_failure("set_isa: NULL", fl_set_isa(NULL), FL_INVALID_ARGUMENT, "name");
  /* Without a loadable CUDA backend (this program is never next to one, and
     FUSEDLSTM_CUDA_LIBRARY names none): a CUDA call says why, and the
     addendum's queries answer without failing. */
  if (!getenv("FUSEDLSTM_CUDA_LIBRARY")) {
    fl_forward_params p = valid_forward(NULL);
    const char* why = NULL;
    p.device.type = FL_DEVICE_CUDA;
    expect_failure("forward: CUDA without the backend library", fl_lstm_forward(&p), FL_INVALID_ARGUMENT,
                   "libfusedlstm_cuda");
    expect_true("cuda_device_count is 0 without the backend", fl_cuda_device_count(&why) == 0 && why && *why);
    expect_true("cuda_backend_name is empty without the backend", fl_cuda_backend_name()[0] == 0);
  }
  expect_failure("set_isa: unknown", fl_set_isa("no-such-isa"), FL_INVALID_ARGUMENT, "ISA");
  fl_training_state_free(NULL);
  expect_true("training_state_bytes(NULL) is 0", fl_training_state_bytes(NULL) == 0);
}

/* ------------------------------------------------------------ live harness */
static void valid_runs(void) {
  fill(x, T * B * I, 1.0), fill(w_ih, 4 * H * I, 0.3), fill(w_hh, 4 * H * H, 0.2), fill(b_ih, 4 * H, 0.1);
  fill(b_hh, 4 * H, -0.1), fill(h0, B * H, 0.5), fill(c0, B * H, -0.5), fill(dy, T * B * H, 1.0);
  fl_training_state* st = kSentinel;
  fl_forward_params p = valid_forward(&st);
  expect_ok("valid: training forward", fl_lstm_forward(&p));
  expect_true("valid: state_out set", st != NULL && st != kSentinel && fl_training_state_bytes(st) > 0);
  expect_true("valid: forward outputs finite and not all zero",
              all_finite(y, T * B * H) && all_finite(h_n, B * H) && (h_n[0] != 0.0 || h_n[1] != 0.0));
  if (st && st != kSentinel) {
    fl_backward_params g = valid_backward(st);
    expect_ok("valid: backward", fl_lstm_backward(&g));
    expect_true("valid: gradients finite", all_finite(dx, T * B * I) && all_finite(dw_hh, 4 * H * H) &&
                                               all_finite(db, 4 * H) && dw_ih[0] != 0.0);
    fl_training_state_free(st);
  }
  fl_cell_params c = valid_cell();
  expect_ok("valid: cell", fl_lstm_cell(&c));
  fl_cell_backward_params cb = valid_cell_backward();
  /* dh, dc may not alias the inputs dh_new, dc_new */
  static double dh[B * H], dc[B * H];
  cb.dh = dh, cb.dc = dc;
  expect_ok("valid: cell_backward", fl_lstm_cell_backward(&cb));

  fill(s_w_ih0, 4 * H * I, 0.3), fill(s_w_ih1, 4 * H * D * R, 0.3), fill(s_w_hh, 4 * H * R, 0.2);
  fill(s_w_hr, R * H, 0.4), fill(s_b, 4 * H, 0.1), fill(s_dy, T * B * D * R, 1.0);
  fl_stack_params sp = valid_stack();
  const int64_t need = fl_lstm_stack_reserve_bytes(&sp);
  expect_ok("valid: stack forward", fl_lstm_stack_forward(&sp, reserve, need));
  expect_true("valid: stack outputs finite", all_finite(s_y, T * B * D * R) && all_finite(s_h, L * D * B * R));
  fl_stack_grads sg = valid_grads();
  expect_ok("valid: stack backward", fl_lstm_stack_backward(&sp, reserve, need, &sg));
  expect_true("valid: stack gradients finite",
              all_finite(s_dx, T * B * I) && all_finite(s_dw_ih[L * D - 1], 4 * H * D * R));
}

/* ---------------------------------------------------------------- cells */
/* GRU and RNN through the same entry points: a bad cell value, with a
 * projection; GRU with feed output; then valid runs without
 * any c array (the arrays are the LSTM's, large enough for G <= 4). */
static void cell_kind_cases(void) {
  fl_forward_params p = valid_forward(NULL);
  int bad = 7;
  memcpy(&p.cell, &bad, sizeof bad);
  expect_failure("cells: cell = 7", fl_lstm_forward(&p), FL_INVALID_ARGUMENT, "cell");
  bad = -1;
  memcpy(&p.cell, &bad, sizeof bad);
  expect_failure("cells: cell = -1", fl_lstm_forward(&p), FL_INVALID_ARGUMENT, "cell");
  p = valid_forward(NULL);
  p.cell = FL_CELL_GRU;
  p.proj_size = 2;
  p.w_hr = w_hh;
  expect_failure("cells: GRU with proj_size", fl_lstm_forward(&p), FL_INVALID_ARGUMENT, "proj_size");
  p = valid_forward(NULL);
  p.cell = FL_CELL_GRU;
  p.mode = FL_ONE_TO_MANY;
  p.feed = FL_FEED_OUTPUT;
  p.lengths = NULL;
  p.I = H;
  expect_ok("cells: GRU feed output", fl_lstm_forward(&p));
  fl_stack_params sp = valid_stack();
  bad = 4;
  memcpy(&sp.cell, &bad, sizeof bad);
  expect_true("cells: stack reserve of cell = 4 is -1", fl_lstm_stack_reserve_bytes(&sp) == -1);
  fl_cell_params c = valid_cell();
  memcpy(&c.cell, &bad, sizeof bad);
  expect_failure("cells: cell step cell = 4", fl_lstm_cell(&c), FL_INVALID_ARGUMENT, "cell");

  static const fl_cell_kind kinds[3] = {FL_CELL_GRU, FL_CELL_RNN_TANH, FL_CELL_RNN_RELU};
  static const char* const names_[3] = {"GRU", "RNN tanh", "RNN relu"};
  for (int k = 0; k < 3; ++k) {
    char name[80];
    fl_training_state* st = NULL;
    p = valid_forward(&st);
    p.cell = kinds[k];
    p.c0 = NULL, p.c_n = NULL;
    snprintf(name, sizeof name, "cells: valid %s training forward without c", names_[k]);
    expect_ok(name, fl_lstm_forward(&p));
    if (st) {
      fl_backward_params g = valid_backward(st);
      static double db_hh[4 * H];
      g.dc0 = NULL, g.db_hh = db_hh;
      snprintf(name, sizeof name, "cells: valid %s backward without dc0", names_[k]);
      expect_ok(name, fl_lstm_backward(&g));
      snprintf(name, sizeof name, "cells: %s gradients finite", names_[k]);
      expect_true(name, all_finite(dx, T * B * I) && all_finite(db_hh, 3 * H) && all_finite(dh0, B * H));
      fl_training_state_free(st);
    }
    c = valid_cell();
    c.cell = kinds[k];
    c.c = NULL, c.c_new = NULL;
    snprintf(name, sizeof name, "cells: valid %s step without c", names_[k]);
    expect_ok(name, fl_lstm_cell(&c));
    fl_cell_backward_params cb = valid_cell_backward();
    static double dh[B * H];
    cb.cell = kinds[k];
    cb.c = NULL, cb.c_new = NULL, cb.dc_new = NULL, cb.dc = NULL, cb.dh = dh;
    snprintf(name, sizeof name, "cells: valid %s step backward without c", names_[k]);
    expect_ok(name, fl_lstm_cell_backward(&cb));
  }
  /* The LSTM still needs its c arrays. */
  p = valid_forward(NULL);
  p.c_n = NULL;
  expect_failure("cells: LSTM without c_n", fl_lstm_forward(&p), FL_INVALID_ARGUMENT, "c_n");
}

int main(void) {
  valid_runs();
  cell_kind_cases();
  forward_cases();
  backward_cases();
  cell_cases();
  stack_cases();
  misc_cases();
  valid_runs(); /* still works after all that */
  printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
