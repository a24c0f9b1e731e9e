/*
 * Decode only the rows and columns of a baseline or progressive JPEG that a crop box needs.
 *
 * libjpeg-turbo's jpeg_crop_scanline() limits the inverse DCT, upsampling and colour conversion
 * to the iMCU columns around the box, and jpeg_skip_scanlines() entropy-decodes the rows above
 * and below without reconstructing them. Entropy decoding still covers the whole scan, so a
 * file truncated or damaged anywhere is still noticed. The settings are the ones Pillow uses
 * (accurate integer DCT, fancy upsampling, block smoothing, JCS_RGB or JCS_GRAYSCALE output),
 * so the box is bit-identical to a full decode followed by a crop; tests check it.
 *
 * Anything unusual returns None so the caller falls back to Pillow: colour spaces other than
 * YCbCr/RGB/grayscale, and every libjpeg warning (premature end of data, corrupt data that the
 * library papers over), since a warning is where Pillow's verdict on the file may differ.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>

#ifndef LIBJPEG_TURBO_VERSION_NUMBER
#error "libjpeg-turbo is needed (jpeg_crop_scanline, jpeg_skip_scanlines)"
#endif

typedef struct {
    struct jpeg_error_mgr pub;
    jmp_buf jump;
} guard_t;

static void on_error(j_common_ptr cinfo) {
    longjmp(((guard_t *)cinfo->err)->jump, 1);
}

static void on_message(j_common_ptr cinfo, int level) {
    if (level < 0)
        longjmp(((guard_t *)cinfo->err)->jump, 1);
}

static void on_output(j_common_ptr cinfo) { (void)cinfo; }

typedef enum { REGION_OK, REGION_FALLBACK, REGION_NO_MEMORY } status_t;

/* Fills out (h rows of w*channels bytes); runs without the GIL. */
static status_t decode(const unsigned char *data, size_t size, int x0, int y0, int x1, int y1,
                       unsigned char *volatile *out, int *channels) {
    struct jpeg_decompress_struct cinfo;
    guard_t guard;
    JSAMPROW volatile row = NULL;
    volatile status_t status = REGION_FALLBACK;

    cinfo.err = jpeg_std_error(&guard.pub);
    guard.pub.error_exit = on_error;
    guard.pub.emit_message = on_message;
    guard.pub.output_message = on_output;
    jpeg_create_decompress(&cinfo);
    if (setjmp(guard.jump)) {
        free(row);
        free(*out);
        *out = NULL;
        jpeg_destroy_decompress(&cinfo);
        return status;
    }
    jpeg_mem_src(&cinfo, data, (unsigned long)size);
    jpeg_read_header(&cinfo, TRUE);
    if (cinfo.num_components == 3 &&
        (cinfo.jpeg_color_space == JCS_YCbCr || cinfo.jpeg_color_space == JCS_RGB)) {
        cinfo.out_color_space = JCS_RGB;
        *channels = 3;
    } else if (cinfo.num_components == 1 && cinfo.jpeg_color_space == JCS_GRAYSCALE) {
        cinfo.out_color_space = JCS_GRAYSCALE;
        *channels = 1;
    } else {
        longjmp(guard.jump, 1);
    }
    /* A box outside libjpeg's idea of the size (Pillow may read it elsewhere): let Pillow decide. */
    if (x0 < 0 || y0 < 0 || x1 <= x0 || y1 <= y0 || (JDIMENSION)x1 > cinfo.image_width ||
        (JDIMENSION)y1 > cinfo.image_height)
        longjmp(guard.jump, 1);
    jpeg_start_decompress(&cinfo);

    /* A cropped scanline behaves like an image edge: fancy upsampling replicates the edge chroma
     * sample, and progressive block smoothing (files whose later scans are missing) reads DC
     * values up to two blocks away. A pixel of the box depends on at most one chroma sample, its
     * block and two more blocks on each side, about 3.1 iMCUs; four iMCUs of margin on each side
     * keep every column of the box out of reach of the crop's edges. */
#if JPEG_LIB_VERSION >= 70
    JDIMENSION margin = 4 * (JDIMENSION)(cinfo.max_h_samp_factor * cinfo.min_DCT_h_scaled_size);
#else
    JDIMENSION margin = 4 * (JDIMENSION)(cinfo.max_h_samp_factor * cinfo.min_DCT_scaled_size);
#endif
    JDIMENSION left = (JDIMENSION)x0 > margin ? (JDIMENSION)x0 - margin : 0;
    JDIMENSION right = (JDIMENSION)x1 + margin < cinfo.output_width ? (JDIMENSION)x1 + margin : cinfo.output_width;
    JDIMENSION xoff = left, width = right - left;
    if (width < cinfo.output_width)
        jpeg_crop_scanline(&cinfo, &xoff, &width); /* widens further, to iMCU boundaries */
    size_t out_row = (size_t)(x1 - x0) * (size_t)*channels;
    row = malloc((size_t)width * (size_t)cinfo.output_components);
    *out = malloc(out_row * (size_t)(y1 - y0));
    if (row == NULL || *out == NULL) {
        status = REGION_NO_MEMORY;
        longjmp(guard.jump, 1);
    }
    if (y0 > 0)
        jpeg_skip_scanlines(&cinfo, (JDIMENSION)y0);
    while (cinfo.output_scanline < (JDIMENSION)y1) {
        JDIMENSION y = cinfo.output_scanline;
        JSAMPROW rows[1] = {row};
        if (jpeg_read_scanlines(&cinfo, rows, 1) != 1)
            longjmp(guard.jump, 1);
        memcpy(*out + (size_t)(y - (JDIMENSION)y0) * out_row,
               row + (size_t)((JDIMENSION)x0 - xoff) * (size_t)*channels, out_row);
    }
    /* Skipping to the very end would only mark the image done, never reading the rest of the
     * scan; skip all but the last row and decode that one, so damage below the box is seen. */
    if (cinfo.output_scanline + 1 < cinfo.output_height)
        jpeg_skip_scanlines(&cinfo, cinfo.output_height - cinfo.output_scanline - 1);
    while (cinfo.output_scanline < cinfo.output_height) {
        JSAMPROW rows[1] = {row};
        if (jpeg_read_scanlines(&cinfo, rows, 1) != 1)
            longjmp(guard.jump, 1);
    }
    jpeg_finish_decompress(&cinfo);
    jpeg_destroy_decompress(&cinfo);
    free(row);
    return REGION_OK;
}

static PyObject *decode_region(PyObject *self, PyObject *args) {
    Py_buffer buf;
    int x0, y0, x1, y1;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*(iiii)", &buf, &x0, &y0, &x1, &y1))
        return NULL;
    unsigned char *pixels = NULL;
    int channels = 0;
    status_t status;
    Py_BEGIN_ALLOW_THREADS
    status = decode(buf.buf, (size_t)buf.len, x0, y0, x1, y1, &pixels, &channels);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&buf);
    switch (status) {
    case REGION_OK: {
        PyObject *bytes = PyBytes_FromStringAndSize(
            (const char *)pixels, (Py_ssize_t)(x1 - x0) * (Py_ssize_t)(y1 - y0) * channels);
        free(pixels);
        if (bytes == NULL)
            return NULL;
        return Py_BuildValue("(Ni)", bytes, channels);
    }
    case REGION_NO_MEMORY:
        return PyErr_NoMemory();
    default:
        Py_RETURN_NONE;
    }
}

static PyMethodDef methods[] = {
    {"decode_region", decode_region, METH_VARARGS,
     "decode_region(data, (left, top, right, bottom)) -> (pixels, channels) or None to fall back."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, .m_name = "_jpegregion", .m_size = -1, .m_methods = methods,
};

PyMODINIT_FUNC PyInit__jpegregion(void) {
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddIntConstant(m, "LIBJPEG_TURBO", LIBJPEG_TURBO_VERSION_NUMBER) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
