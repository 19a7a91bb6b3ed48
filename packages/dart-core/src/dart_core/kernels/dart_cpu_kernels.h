/* The kernels of dart_cpu.c for one element type: included once per type with T (the type),
 * NAME(x) (x with the type's suffix) and WINDOWED (1: segments go through dart_cpu_window.h's
 * vector path where they fit, T being float) defined. */

/* One strip line of a row over columns [first, last): line[x] = up[x] + fy · (lo[x] - up[x]), and,
 * when spread is not NULL, spread[x] = lo[x] - up[x]. */
static inline void NAME(blend_rows)(const T *restrict up, const T *restrict lo, T fy, T *restrict line,
                                    T *restrict spread, int64_t first, int64_t last) {
    if (spread) {
        for (int64_t x = first; x < last; ++x) {
            spread[x] = lo[x] - up[x];
            line[x] = up[x] + fy * spread[x];
        }
    } else {
        for (int64_t x = first; x < last; ++x) line[x] = up[x] + fy * (lo[x] - up[x]);
    }
}

/* Prefetches the two image lines of strip line `at` of a row (counted over channels: line at % P of
 * channel at / P) over the columns of span, so that they arrive while the line before is sampled:
 * without it the blends wait on memory most of their time. Nothing past the row's last line. */
static inline void NAME(prefetch_line)(const T *image, const Geometry *geo, int64_t row, int64_t at,
                                       int64_t channels, Span span) {
    if (at >= channels * geo->lines) return;
    Lines next = row_lines(geo, row, at % geo->lines, at / geo->lines);
    for (int64_t x = span.first; x < span.last; x += 64 / sizeof(T)) {
        PREFETCH(image + next.upper + x);
        PREFETCH(image + next.lower + x);
        KEEP_LOOP();
    }
}

/* A segment's samples on one strip line: o[t] = line[xs[t]] + fx[t] · (line[xs[t] + 1] - line[xs[t]]).
 * Through the window path where it applies; else scalar on purpose: for runs of ~16 samples, gcc's
 * vectorised gathers were slower than plain loads on the CPUs measured. */
NO_VECTORIZE static inline void NAME(sample_line)(const T *restrict line, const int32_t *restrict xs,
                                                  const T *restrict fx, T *restrict o, int64_t count,
                                                  int64_t window) {
#if WINDOWED
    if (window >= 0) {
        sample_window_f32(line, xs, fx, o, count, window);
        return;
    }
#else
    (void)window;
#endif
    for (int64_t t = 0; t < count; ++t) {
        T a = line[xs[t]];
        o[t] = a + fx[t] * (line[xs[t] + 1] - a);
    }
}

/* Backward of sample_line: adds g[t] · d o[t] / d fx[t] to gx[t]; returns the sum over t of
 * g[t] · d o[t] / d fy, where the line is up + fy · spread. */
NO_VECTORIZE static inline T NAME(sample_line_backward)(const T *restrict line, const T *restrict spread,
                                                        const int32_t *restrict xs, const T *restrict fx,
                                                        const T *restrict g, T *restrict gx, int64_t count,
                                                        int64_t window) {
#if WINDOWED
    if (window >= 0) return sample_window_backward_f32(line, spread, xs, fx, g, gx, count, window);
#else
    (void)window;
#endif
    T line_sum = 0;
    for (int64_t t = 0; t < count; ++t) {
        int32_t x = xs[t];
        gx[t] += g[t] * (line[x + 1] - line[x]);
        line_sum += g[t] * (spread[x] + fx[t] * (spread[x + 1] - spread[x]));
    }
    return line_sum;
}

/* Image gradient of a segment on one strip line (upper line up, lower line lo): scatters g[t] to
 * the 4 taps of sample t. */
static inline void NAME(sample_line_image_grad)(T *gup, T *glo, T fy, const int32_t *xs, const T *fx,
                                               const T *g, int64_t count) {
    for (int64_t t = 0; t < count; ++t) {
        int32_t x = xs[t];
        T low = g[t] * fy, high = g[t] - low;
        gup[x] += high * (1 - fx[t]);
        gup[x + 1] += high * fx[t];
        glo[x] += low * (1 - fx[t]);
        glo[x + 1] += low * fx[t];
    }
}

/* A strip tap on its own (general path): column s (inside [0, S)) on line k of channel c. Sets its
 * row, its image offsets and y fraction; returns the upper line's value, spread = lower - upper. */
static inline T NAME(strip_tap)(const T *image, const Geometry *geo, int64_t s, int64_t c, int64_t k,
                                int64_t *row, int64_t *upper, int64_t *lower, T *fy, T *spread) {
    *row = s / geo->width;
    Lines at = row_lines(geo, *row, k, c);
    *upper = at.upper + s - *row * geo->width;
    *lower = at.lower + s - *row * geo->width;
    *fy = ((const T *)geo->frac)[*row * geo->lines + k];
    *spread = image[*lower] - image[*upper];
    return image[*upper];
}

/* The arguments of the patch kernels, for the per-image workers. */
typedef struct {
    const T *images, *line_frac, *sample_frac, *grad_patches;
    const int64_t *line_top, *sample_left;
    T *patches, *grad_images, *grad_line, *grad_sample;
    int64_t channels, height, width, rows, lines, tokens;
} NAME(PatchArgs);

/* The names the per-image workers use, from their (const void *) arguments and work memory. */
#define UNPACK_PATCH_ARGS(raw, work)                                                                      \
    const NAME(PatchArgs) *a = raw;                                                                      \
    const T *images = a->images, *line_frac = a->line_frac, *sample_frac = a->sample_frac;              \
    const int64_t *line_top = a->line_top, *sample_left = a->sample_left;                              \
    const int64_t channels = a->channels, height = a->height, width = a->width, rows = a->rows;        \
    const int64_t lines = a->lines, tokens = a->tokens;                                                  \
    const int64_t samples = tokens * lines, plane = height * width, patch = channels * lines * lines;  \
    Scratch scratch = *work

/* The forward pass for image b (see dart_patch_forward). */
static void NAME(patch_forward_image)(const void *raw, int64_t b, Scratch *work) {
    UNPACK_PATCH_ARGS(raw, work);
    T *patches = a->patches;
    const T *image = images + b * channels * plane, *fx = sample_frac + b * samples;
    T *out = patches + b * tokens * patch;
    Geometry geo = {line_top + b * rows * lines, line_frac + b * rows * lines, sample_left + b * samples,
                    height, width, rows, lines, tokens};
    int64_t count = find_segments(&geo, &scratch);
    for (int64_t i = 0; i < count;) { /* segments of one row: sweep each of its lines across them */
        int64_t end = same_row_end(scratch.segments, i, count), row = scratch.segments[i].row;
        Span span = column_span(scratch.segments, i, end);
        for (int64_t c = 0; c < channels; ++c) {
            for (int64_t k = 0; k < lines; ++k) {
                Lines at = row_lines(&geo, row, k, c);
                T *line = scratch.line, fy = line_frac[b * rows * lines + row * lines + k];
                NAME(blend_rows)(image + at.upper, image + at.lower, fy, line, NULL, span.first, span.last);
                NAME(prefetch_line)(image, &geo, row, c * lines + k + 1, channels, span);
                for (int64_t j = i; j < end; ++j) {
                    const Segment *seg = &scratch.segments[j];
                    int64_t m = seg->token * lines + seg->first;
                    NAME(sample_line)(line, scratch.columns + m, fx + m,
                                      out + seg->token * patch + (c * lines + k) * lines + seg->first,
                                      seg->count, seg->window);
                }
            }
        }
        i = end;
    }
    for (int64_t m = 0; m < samples; ++m) { /* the samples left out: taps across a seam or outside */
        if (scratch.columns[m] >= 0) continue;
        int64_t n = m / lines, t = m - n * lines;
        for (int64_t c = 0; c < channels; ++c) {
            for (int64_t k = 0; k < lines; ++k) {
                T value = 0;
                for (int64_t j = 0; j < 2; ++j) {
                    int64_t s = geo.left[m], row, upper, lower;
                    T weight = j ? fx[m] : 1 - fx[m], strip = 0; /* zero padding; a NaN weight stays NaN */
                    if (s >= -j && s < rows * width - j) { /* tap s + j inside, without overflow */
                        s += j;
                        T fy, spread;
                        T up = NAME(strip_tap)(image, &geo, s, c, k, &row, &upper, &lower, &fy, &spread);
                        strip = up + fy * spread;
                    }
                    value += weight * strip;
                }
                out[n * patch + (c * lines + k) * lines + t] = value;
            }
        }
    }
}

int NAME(dart_patch_forward)(const T *images, const int64_t *line_top, const T *line_frac,
                             const int64_t *sample_left, const T *sample_frac, T *patches, int64_t batch,
                             int64_t channels, int64_t height, int64_t width, int64_t rows, int64_t lines,
                             int64_t tokens) {
    NAME(PatchArgs) args = {images, line_frac, sample_frac, NULL, line_top, sample_left, patches, NULL, NULL, NULL,
                            channels, height, width, rows, lines, tokens};
    return for_each_image(NAME(patch_forward_image), &args, batch, tokens * lines, width, sizeof(T));
}

/* The backward pass for image b (see dart_patch_backward). */
static void NAME(patch_backward_image)(const void *raw, int64_t b, Scratch *work) {
    UNPACK_PATCH_ARGS(raw, work);
    const T *grad_patches = a->grad_patches;
    T *grad_images = a->grad_images, *grad_line = a->grad_line, *grad_sample = a->grad_sample;
    const T *image = images + b * channels * plane, *fx = sample_frac + b * samples;
    const T *grad = grad_patches + b * tokens * patch;
    T *gline = grad_line + b * rows * lines, *gsample = grad_sample + b * samples;
    T *gimage = grad_images ? grad_images + b * channels * plane : NULL;
    memset(gline, 0, sizeof(T) * rows * lines);
    memset(gsample, 0, sizeof(T) * samples);
    if (gimage) memset(gimage, 0, sizeof(T) * channels * plane);
    Geometry geo = {line_top + b * rows * lines, line_frac + b * rows * lines, sample_left + b * samples,
                    height, width, rows, lines, tokens};
    int64_t count = find_segments(&geo, &scratch);
    for (int64_t i = 0; i < count;) {
        int64_t end = same_row_end(scratch.segments, i, count), row = scratch.segments[i].row;
        Span span = column_span(scratch.segments, i, end);
        for (int64_t c = 0; c < channels; ++c) {
            for (int64_t k = 0; k < lines; ++k) {
                Lines at = row_lines(&geo, row, k, c);
                T *line = scratch.line, *spread = line + width;
                T fy = line_frac[b * rows * lines + row * lines + k], line_sum = 0;
                NAME(blend_rows)(image + at.upper, image + at.lower, fy, line, spread, span.first, span.last);
                NAME(prefetch_line)(image, &geo, row, c * lines + k + 1, channels, span);
                for (int64_t j = i; j < end; ++j) {
                    const Segment *seg = &scratch.segments[j];
                    int64_t m = seg->token * lines + seg->first;
                    const T *g = grad + seg->token * patch + (c * lines + k) * lines + seg->first;
                    line_sum += NAME(sample_line_backward)(line, spread, scratch.columns + m, fx + m, g,
                                                           gsample + m, seg->count, seg->window);
                    if (gimage)
                        NAME(sample_line_image_grad)(gimage + at.upper, gimage + at.lower, fy,
                                                    scratch.columns + m, fx + m, g, seg->count);
                }
                gline[row * lines + k] += line_sum;
            }
        }
        i = end;
    }
    for (int64_t m = 0; m < samples; ++m) {
        if (scratch.columns[m] >= 0) continue;
        int64_t n = m / lines, t = m - n * lines;
        for (int64_t c = 0; c < channels; ++c) {
            for (int64_t k = 0; k < lines; ++k) {
                T g = grad[n * patch + (c * lines + k) * lines + t];
                for (int64_t j = 0; j < 2; ++j) {
                    int64_t s = geo.left[m], row, upper, lower;
                    if (s < -j || s >= rows * width - j) continue; /* tap s + j outside */
                    s += j;
                    T fy, spread;
                    T up = NAME(strip_tap)(image, &geo, s, c, k, &row, &upper, &lower, &fy, &spread);
                    T weight = j ? fx[m] : 1 - fx[m];
                    gsample[m] += (j ? g : -g) * (up + fy * spread);
                    gline[row * lines + k] += g * weight * spread;
                    if (!gimage) continue;
                    gimage[upper] += g * weight * (1 - fy);
                    gimage[lower] += g * weight * fy;
                }
            }
        }
    }
}

/* Gradients to line_frac (B, R, P), sample_frac (B, M) and, when grad_images is not NULL, the
 * images (B, C, H, W); all three are overwritten for the slice's samples. */
int NAME(dart_patch_backward)(const T *grad_patches, const T *images, const int64_t *line_top,
                              const T *line_frac, const int64_t *sample_left, const T *sample_frac,
                              T *grad_images, T *grad_line, T *grad_sample, int64_t batch,
                              int64_t channels, int64_t height, int64_t width, int64_t rows,
                              int64_t lines, int64_t tokens) {
    NAME(PatchArgs) args = {images, line_frac, sample_frac, grad_patches, line_top, sample_left, NULL,
                            grad_images, grad_line, grad_sample, channels, height, width, rows, lines, tokens};
    return for_each_image(NAME(patch_backward_image), &args, batch, tokens * lines, width, sizeof(T));
}

/* The cells [first, last] that the interval between points p0 and p1 covers, and its ends a <= e,
 * all clamped to [0, L] (a NaN point reads as 0: callers check for NaN first). Returns the
 * integral's sign: -1 when p1 < p0. */
static inline T NAME(interval_cells)(T p0, T p1, int64_t cells, int64_t *first, int64_t *last, T *a, T *e) {
    T lo = p0 >= 0 ? (p0 < (T)cells ? p0 : (T)cells) : 0;
    T hi = p1 >= 0 ? (p1 < (T)cells ? p1 : (T)cells) : 0;
    T sign = hi < lo ? -1 : 1;
    *a = hi < lo ? hi : lo;
    *e = hi < lo ? lo : hi;
    *first = (int64_t)*a < cells - 1 ? (int64_t)*a : cells - 1;
    *last = (int64_t)*e < cells - 1 ? (int64_t)*e : cells - 1;
    return sign;
}

/* The length of cell i's overlap with [a, e], for i in [first, last]. */
static inline T NAME(cell_overlap)(int64_t i, int64_t first, int64_t last, T a, T e) {
    return (i == last ? e : (T)(i + 1)) - (i == first ? a : (T)i);
}

#undef UNPACK_PATCH_ARGS

/* Integral of a piecewise-constant signal (cells [i, i + 1], i < L) between consecutive points:
 * out[b, k] = the integral of values[b] from points[b, k] to points[b, k + 1], the points clamped
 * to [0, L]. values (B, L, D), points (B, K + 1), out (B, K, D). */
int NAME(dart_interval_integral)(const T *values, const T *points, T *out, int64_t batch,
                                 int64_t cells, int64_t count, int64_t dim) {
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < batch; ++b) {
        const T *v = values + b * cells * dim, *p = points + b * (count + 1);
        for (int64_t k = 0; k < count; ++k) {
            T *o = out + (b * count + k) * dim, a, e;
            int64_t first, last;
            T sign = NAME(interval_cells)(p[k], p[k + 1], cells, &first, &last, &a, &e);
            if (p[k] != p[k] || p[k + 1] != p[k + 1]) { /* a NaN end: a NaN integral, as in the PyTorch path */
                for (int64_t d = 0; d < dim; ++d) o[d] = p[k] + p[k + 1];
                continue;
            }
            for (int64_t d = 0; d < dim; ++d) o[d] = 0;
            for (int64_t i = first; i <= last; ++i) {
                T weight = sign * NAME(cell_overlap)(i, first, last, a, e);
                for (int64_t d = 0; d < dim; ++d) o[d] += weight * v[i * dim + d];
            }
        }
    }
    return 0;
}

/* Gradients of dart_interval_integral: grad_values (B, L, D) and grad_points (B, K + 1), both
 * overwritten. A point's derivative is the signal at it, zero where the clamp holds it, the ends 0
 * and L included (torch.clamp's convention, which the PyTorch path inherits). Intervals with a NaN
 * end pass nothing back to the values. */
int NAME(dart_interval_integral_backward)(const T *grad_out, const T *values, const T *points, T *grad_values,
                                          T *grad_points, int64_t batch, int64_t cells, int64_t count,
                                          int64_t dim) {
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < batch; ++b) {
        const T *v = values + b * cells * dim, *p = points + b * (count + 1);
        const T *g = grad_out + b * count * dim;
        T *gv = grad_values + b * cells * dim, *gp = grad_points + b * (count + 1);
        memset(gv, 0, sizeof(T) * cells * dim);
        for (int64_t k = 0; k <= count; ++k) {
            gp[k] = 0;
            if (!(p[k] > 0 && p[k] < (T)cells)) continue;
            int64_t cell = (int64_t)p[k] < cells - 1 ? (int64_t)p[k] : cells - 1;
            for (int64_t d = 0; d < dim; ++d) {
                T outer = (k > 0 ? g[(k - 1) * dim + d] : 0) - (k < count ? g[k * dim + d] : 0);
                gp[k] += outer * v[cell * dim + d];
            }
        }
        for (int64_t k = 0; k < count; ++k) {
            T a, e;
            int64_t first, last;
            T sign = NAME(interval_cells)(p[k], p[k + 1], cells, &first, &last, &a, &e);
            if (p[k] != p[k] || p[k + 1] != p[k + 1]) continue;
            for (int64_t i = first; i <= last; ++i) {
                T weight = sign * NAME(cell_overlap)(i, first, last, a, e);
                for (int64_t d = 0; d < dim; ++d) gv[i * dim + d] += weight * g[k * dim + d];
            }
        }
    }
    return 0;
}
