/* DART's CPU kernels: the fused patch sampler and the interval integral, forward and backward.
 *
 * Plain C (no Python or torch headers): dart_core.kernels.native compiles this file once per
 * machine and calls it through ctypes on contiguous tensors' data pointers. Built with OpenMP,
 * every function splits its batch between threads, one image per iteration (nothing is shared
 * between images); with -fopenmp the library binds to the libgomp.so.1 that torch has already
 * loaded, so it uses torch's OpenMP threads and thread count (torch.set_num_threads) instead of
 * starting threads of its own.
 *
 * Index conventions are those of patch_torch.py (patch_function.py guarantees the ranges, so no
 * index is ever out of bounds or overflows; NaN positions give NaN values, as in PyTorch):
 *   images       (B, C, H, W)
 *   line_top     (B, R, P) int64   upper image line of line k of row r, in [0, H - 1]
 *   line_frac    (B, R, P)         blend towards line min(top + 1, H - 1)
 *   sample_left  (B, M) int64      left strip column of sample m = n * P + t, in [-2, S + 1]; the
 *                                  strip has S = R * W columns, column s is image column s % W of
 *                                  row s / W, columns outside [0, S) read as zero
 *   sample_frac  (B, M)            blend towards column left + 1
 *   patches      (B, N, C, P, P)   [b, n, c, k, t] = line k, sample t of token n
 *
 * Scheme (one core, 448 images): the samples of an image are cut into segments, runs of one
 * token's samples whose two x taps lie in one row. For each row, each of its C·P strip lines is
 * blended once from its two image lines into a small buffer (vectorised), and every segment of
 * the row reads its samples from that buffer (2 taps per value, in L1). The image is read once
 * per pass, line by line, each line pair prefetched while the one before is sampled. Samples
 * whose taps cross a row seam or leave the strip (a handful per image) take a general path that
 * places each tap on its own. The backward pass recomputes the strip lines and their lower -
 * upper spread instead of keeping anything from the forward.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__GNUC__) && !defined(__clang__)
#define NO_VECTORIZE __attribute__((optimize("no-tree-vectorize")))
#else
#define NO_VECTORIZE
#endif

/* PREFETCH(address) asks for a cache line ahead of use. A loop of nothing but prefetches is
 * deleted by gcc -O3 (the prefetches vanished from the binary), so KEEP_LOOP() gives it an empty
 * statement the compiler must keep. */
#if defined(__GNUC__)
#define PREFETCH(address) __builtin_prefetch(address)
#define KEEP_LOOP() __asm__ __volatile__("")
#else
#define PREFETCH(address) ((void)(address))
#define KEEP_LOOP() ((void)0)
#endif

#include "dart_cpu_window.h"

/* One image's sampling geometry (pointers at the image's own entries). */
typedef struct {
    const int64_t *top;  /* (R, P) */
    const void *frac;    /* (R, P), the kernel's element type */
    const int64_t *left; /* (N·P) */
    int64_t height, width, rows, lines, tokens;
} Geometry;

/* Consecutive samples of one token whose two taps lie inside one row: their left taps' columns
 * span [low, high]; window is the first of the WINDOW columns all their taps lie in
 * (dart_cpu_window.h), -1 when they do not fit in one. */
typedef struct {
    int64_t token, first, count, row, low, high, window;
} Segment;

/* Per-call work memory: the segments and, for every sample, its left tap's column within its row
 * (-1 for a sample in no segment). */
typedef struct {
    Segment *segments;
    int32_t *columns;
    void *line; /* two image lines' worth of the element type: a strip line and its spread */
} Scratch;

static void scratch_free(Scratch *scratch) {
    free(scratch->segments);
    free(scratch->columns);
    free(scratch->line);
}

/* Allocates one thread's work memory; on failure frees it all (pointers NULL) and returns 1. */
static int scratch_init(Scratch *scratch, int64_t samples, int64_t width, size_t element) {
    scratch->segments = malloc(sizeof(Segment) * (size_t)(samples + 1)); /* + 1: never malloc(0) */
    scratch->columns = malloc(sizeof(int32_t) * (size_t)(samples + 1));
    scratch->line = calloc(2 * (size_t)width + WINDOW, element); /* + WINDOW: see dart_cpu_window.h */
    if (scratch->segments && scratch->columns && scratch->line) return 0;
    scratch_free(scratch);
    scratch->segments = NULL;
    scratch->columns = NULL;
    scratch->line = NULL;
    return 1;
}

/* Run work(args, b, scratch) for every image b < batch, split between the OpenMP threads, each
 * with its own work memory. Returns 1 when a thread could not allocate it (its images are skipped). */
typedef void (*ImageWork)(const void *args, int64_t b, Scratch *scratch);

static int for_each_image(ImageWork work, const void *args, int64_t batch, int64_t samples, int64_t width,
                          size_t element) {
    int failed = 0;
#pragma omp parallel reduction(| : failed)
    {
        Scratch scratch;
        int ready = !scratch_init(&scratch, samples, width, element);
        failed |= !ready;
#pragma omp for schedule(static)
        for (int64_t b = 0; b < batch; ++b)
            if (ready) work(args, b, &scratch);
        scratch_free(&scratch);
    }
    return failed;
}

/* Split an image's samples into segments; returns how many. A sample whose taps cross a row seam
 * or leave the strip belongs to none (the general path handles it). */
static int64_t find_segments(const Geometry *geo, Scratch *scratch) {
    int64_t count = 0, length = geo->rows * geo->width;
    for (int64_t n = 0; n < geo->tokens; ++n) {
        for (int64_t t = 0; t < geo->lines; ++t) {
            int64_t m = n * geo->lines + t, s = geo->left[m];
            int64_t row = s >= 0 ? s / geo->width : -1, col = s - row * geo->width;
            if (s < 0 || s >= length - 1 || col + 1 >= geo->width) {
                scratch->columns[m] = -1;
                continue;
            }
            scratch->columns[m] = (int32_t)col;
            Segment *last = count ? &scratch->segments[count - 1] : NULL;
            if (last && last->token == n && last->row == row && last->first + last->count == t) {
                ++last->count;
                last->low = col < last->low ? col : last->low;
                last->high = col > last->high ? col : last->high;
            } else {
                Segment seg = {n, t, 1, row, col, col, -1};
                scratch->segments[count++] = seg;
            }
        }
    }
    for (int64_t i = 0; i < count; ++i) { /* a window: at most 16 samples (one vector), both taps inside */
        Segment *seg = &scratch->segments[i];
        seg->window = seg->count <= 16 && seg->high + 1 - seg->low < WINDOW ? seg->low : -1;
    }
    return count;
}

/* The end of the run of segments from i on that lie in segment i's row. */
static int64_t same_row_end(const Segment *segments, int64_t i, int64_t count) {
    int64_t end = i + 1;
    while (end < count && segments[end].row == segments[i].row) ++end;
    return end;
}

/* The columns [first, last) that segments [i, end) of one row read (both taps). */
typedef struct {
    int64_t first, last;
} Span;

static Span column_span(const Segment *segments, int64_t i, int64_t end) {
    Span span = {INT64_MAX, 0};
    for (int64_t j = i; j < end; ++j) {
        span.first = segments[j].low < span.first ? segments[j].low : span.first;
        span.last = segments[j].high + 2 > span.last ? segments[j].high + 2 : span.last;
    }
    return span;
}

/* Offsets of the upper and lower image lines of line k of a row, in channel c's plane. */
typedef struct {
    int64_t upper, lower;
} Lines;

static Lines row_lines(const Geometry *geo, int64_t row, int64_t k, int64_t c) {
    int64_t line = geo->top[row * geo->lines + k];
    int64_t below = line + 1 < geo->height ? line + 1 : geo->height - 1;
    Lines at = {(c * geo->height + line) * geo->width, (c * geo->height + below) * geo->width};
    return at;
}

/* 1 when built with OpenMP (the kernels then split the batch between threads themselves). */
int dart_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

#define NAME(x) x##_f32
#define T float
#define WINDOWED WINDOWED_FLOAT
#include "dart_cpu_kernels.h"
#undef WINDOWED
#undef T
#undef NAME

#define NAME(x) x##_f64
#define T double
#define WINDOWED 0
#include "dart_cpu_kernels.h"
#undef WINDOWED
#undef T
#undef NAME
