/* classify.c: a C program, without Python, that classifies 8x8 digits with the
 * one-layer network of examples/one_layer.toml and weights trained in Python.
 *
 * It uses two pairs of files that graphc writes (see train_and_export.py):
 *   one_layer.c / one_layer.h                the model: graphc emit (or m.export)
 *   one_layer_params.c / one_layer_params.h  the trained weights as const arrays
 *
 * Input, on stdin: one image per line, its label (0-9) and then its 64 pixels.
 * Output: one line per image, "predicted label", then the accuracy over the set,
 * from one call of one_layer_predict: the probabilities from the pixels alone (the
 * labels are read only to report the accuracy).
 *
 *     make            # builds ./classify and runs it on build/digits_test.txt
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "one_layer.h"
#include "one_layer_params.h"

#define PIXELS 64        /* Dx in one_layer.toml */
#define CLASSES 10       /* Nc in one_layer.toml */
#define MAX_IMAGES 100000L

static int read_images(FILE *in, float **x, int32_t **y, long *count)
{
    long capacity = 256, n = 0;
    float *xs = malloc((size_t)capacity * PIXELS * sizeof *xs);
    int32_t *ys = malloc((size_t)capacity * sizeof *ys);
    int label;

    if (!xs || !ys) {
        free(xs);
        free(ys);
        return -1;
    }
    while (fscanf(in, "%d", &label) == 1) {
        long j;
        if (n == capacity) {
            float *bigger_x;
            int32_t *bigger_y;
            if (capacity * 2 > MAX_IMAGES) {
                break;
            }
            capacity *= 2;
            bigger_x = realloc(xs, (size_t)capacity * PIXELS * sizeof *xs);
            bigger_y = realloc(ys, (size_t)capacity * sizeof *ys);
            if (bigger_x) xs = bigger_x;
            if (bigger_y) ys = bigger_y;
            if (!bigger_x || !bigger_y) {
                free(xs);
                free(ys);
                return -1;
            }
        }
        for (j = 0; j < PIXELS; ++j) {
            if (fscanf(in, "%f", &xs[n * PIXELS + j]) != 1) {
                fprintf(stderr, "classify: image %ld has fewer than %d pixels\n", n + 1, PIXELS);
                free(xs);
                free(ys);
                return -1;
            }
        }
        if (label < 0 || label >= CLASSES) {
            fprintf(stderr, "classify: image %ld has label %d, not one of 0..%d\n", n + 1, label, CLASSES - 1);
            free(xs);
            free(ys);
            return -1;
        }
        ys[n++] = (int32_t)label;
    }
    *x = xs;
    *y = ys;
    *count = n;
    return 0;
}

int main(void)
{
    float *x = NULL, *probs = NULL;
    int32_t *y = NULL;
    long n = 0, i, correct = 0;
    unsigned char *raw = NULL;
    void *workspace;
    size_t bytes;
    int status;

    if (read_images(stdin, &x, &y, &n) != 0 || n == 0) {
        fprintf(stderr, "classify: no images read from stdin (a line is: label, then %d pixels)\n", PIXELS);
        return 1;
    }
    /* The model allocates nothing: the caller provides outputs and a 64-byte aligned workspace. */
    bytes = one_layer_workspace_size(n);
    probs = malloc((size_t)n * CLASSES * sizeof *probs);
    raw = bytes ? malloc(bytes + 63) : NULL;   /* C99 has no aligned_alloc: align by hand */
    if (!probs || !raw) {
        fprintf(stderr, "classify: no memory for %ld images\n", n);
        return 1;
    }
    workspace = raw + (64 - (uintptr_t)raw % 64) % 64;
    /* predict computes the outputs that need no labels: probs, from the pixels alone */
    status = one_layer_predict(n, x, one_layer_param_W, one_layer_param_b1, one_layer_param_U,
                               one_layer_param_b2, probs, workspace);
    if (status != GRAPHC_OK) {
        fprintf(stderr, "classify: one_layer_predict returned %d (see one_layer.h)\n", status);
        return 1;
    }
    for (i = 0; i < n; ++i) {
        const float *p = probs + i * CLASSES;
        int best = 0, k;
        for (k = 1; k < CLASSES; ++k) {
            if (p[k] > p[best]) best = k;
        }
        correct += best == y[i];
        printf("%d %d\n", best, (int)y[i]);
    }
    printf("accuracy %.4f (%ld of %ld)\n", (double)correct / (double)n, correct, n);
    free(raw);
    free(probs);
    free(x);
    free(y);
    return 0;
}
