/* A segment's samples read through a window (AVX-512, float only; included by dart_cpu.c).
 *
 * The scalar loops of dart_cpu_kernels.h make two dependent loads per tap: the column, then the
 * line buffer. Here a segment of up to 16 samples whose taps all lie within WINDOW consecutive
 * columns of the line buffer loads those columns as four vectors once, and each tap becomes a
 * permute of them. A segment that does not fit (a token wider than ~60 columns of its row) is left
 * to the scalar loop. The line buffer holds WINDOW more elements than it uses, so that the vector
 * loads never leave it (what they read past the blended columns is never picked). */

#define WINDOW 64 /* columns; four 16-float vectors */

#if defined(__AVX512F__)
#include <immintrin.h>
#define WINDOWED_FLOAT 1

typedef struct {
    __m512 column[4]; /* columns [16 i, 16 i + 16) of the window */
} Window;

static inline Window window_load(const float *start) {
    Window window = {{_mm512_loadu_ps(start), _mm512_loadu_ps(start + 16), _mm512_loadu_ps(start + 32),
                      _mm512_loadu_ps(start + 48)}};
    return window;
}

/* window[offset[t]] for offsets in [0, 64): a two-vector permute for each half, then a blend. */
static inline __m512 window_pick(const Window *window, __m512i offset) {
    __mmask16 upper = _mm512_cmpge_epi32_mask(offset, _mm512_set1_epi32(32));
    __m512 low = _mm512_permutex2var_ps(window->column[0], offset, window->column[1]);
    __m512 high = _mm512_permutex2var_ps(window->column[2], offset, window->column[3]);
    return _mm512_mask_blend_ps(upper, low, high);
}

/* The samples of a segment and the offsets of their left and right taps in its window. */
typedef struct {
    __mmask16 samples;
    __m512i left, right;
} WindowTaps;

/* Columns xs of a segment's count <= 16 samples, relative to its window's first column start. */
static inline WindowTaps window_taps(const int32_t *xs, int64_t count, int64_t start) {
    WindowTaps taps;
    taps.samples = (__mmask16)((1u << count) - 1);
    taps.left = _mm512_sub_epi32(_mm512_maskz_loadu_epi32(taps.samples, xs), _mm512_set1_epi32((int32_t)start));
    taps.right = _mm512_add_epi32(taps.left, _mm512_set1_epi32(1));
    return taps;
}

/* sample_line (dart_cpu_kernels.h) for a segment with a window (columns from start on). */
static inline void sample_window_f32(const float *line, const int32_t *xs, const float *fx, float *o,
                                     int64_t count, int64_t start) {
    WindowTaps taps = window_taps(xs, count, start);
    Window window = window_load(line + start);
    __m512 a = window_pick(&window, taps.left), b = window_pick(&window, taps.right);
    __m512 f = _mm512_maskz_loadu_ps(taps.samples, fx);
    _mm512_mask_storeu_ps(o, taps.samples, _mm512_fmadd_ps(f, _mm512_sub_ps(b, a), a));
}

/* sample_line_backward (dart_cpu_kernels.h) for a segment with a window (columns from start on). */
static inline float sample_window_backward_f32(const float *line, const float *spread, const int32_t *xs,
                                               const float *fx, const float *g, float *gx, int64_t count,
                                               int64_t start) {
    WindowTaps taps = window_taps(xs, count, start);
    Window window = window_load(line + start), spreads = window_load(spread + start);
    __m512 a = window_pick(&window, taps.left), b = window_pick(&window, taps.right);
    __m512 sa = window_pick(&spreads, taps.left), sb = window_pick(&spreads, taps.right);
    __m512 f = _mm512_maskz_loadu_ps(taps.samples, fx), grad = _mm512_maskz_loadu_ps(taps.samples, g);
    __m512 sums = _mm512_maskz_loadu_ps(taps.samples, gx);
    _mm512_mask_storeu_ps(gx, taps.samples, _mm512_fmadd_ps(grad, _mm512_sub_ps(b, a), sums));
    /* masked: a lane past count picks an arbitrary column, which may hold an image's NaN */
    return _mm512_mask_reduce_add_ps(taps.samples, _mm512_mul_ps(grad, _mm512_fmadd_ps(f, _mm512_sub_ps(sb, sa), sa)));
}
#else
#define WINDOWED_FLOAT 0
#endif
