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
 * The module links no libjpeg. bind() takes the library Pillow itself decodes with (locate()
 * finds it through PIL._imaging) and resolves the functions from it: libjpeg-turbo releases
 * reconstruct some files differently (block smoothing of progressive files whose later scans are
 * missing), so only Pillow's own copy reproduces the reference pixels. The headers fix the ABI at
 * build time (struct layouts, JPEG_LIB_VERSION): 62 for Pillow's wheels, whose libjpeg-turbo is
 * libjpeg.so.62 like Debian's and Fedora's; 80 only matches a Pillow linked to libjpeg.so.8.
 * jpeg_CreateDecompress refuses a library of another ABI, and bind() probes for that.
 *
 * Anything unusual returns None so the caller falls back to Pillow: colour spaces other than
 * YCbCr/RGB/grayscale, and every libjpeg warning (premature end of data, corrupt data that the
 * library papers over), since a warning is where Pillow's verdict on the file may differ.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dlfcn.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>

#ifndef LIBJPEG_TURBO_VERSION_NUMBER
#error "libjpeg-turbo headers are needed (jpeg_crop_scanline, jpeg_skip_scanlines)"
#endif

/* Every libjpeg function the decoder calls; the prototypes come from jpeglib.h. */
#define JPEG_FUNCTIONS(X)                                                                          \
    X(jpeg_std_error)                                                                              \
    X(jpeg_CreateDecompress)                                                                       \
    X(jpeg_mem_src)                                                                                \
    X(jpeg_read_header)                                                                            \
    X(jpeg_start_decompress)                                                                       \
    X(jpeg_crop_scanline)                                                                          \
    X(jpeg_skip_scanlines)                                                                         \
    X(jpeg_read_scanlines)                                                                         \
    X(jpeg_finish_decompress)                                                                      \
    X(jpeg_destroy_decompress)

typedef struct {
#define FIELD(name) __typeof__(name) *name;
    JPEG_FUNCTIONS(FIELD)
#undef FIELD
} jpeg_api_t;

/* Set once by bind(), under the GIL, before any decode can read it; never changed afterwards, so
 * decodes running without the GIL need no lock. The handle stays open for the process's life. */
static jpeg_api_t api;
static void *bound_handle;
static PyObject *bound_path;

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

/* Errors and warnings jump back to the caller's setjmp; nothing is printed. cinfo->mem is cleared
 * first so that destroying a struct whose creation failed (wrong ABI) is harmless. */
static void guard_errors(const jpeg_api_t *lib, struct jpeg_decompress_struct *cinfo, guard_t *guard) {
    cinfo->mem = NULL;
    cinfo->err = lib->jpeg_std_error(&guard->pub);
    guard->pub.error_exit = on_error;
    guard->pub.emit_message = on_message;
    guard->pub.output_message = on_output;
}

/* Fills out (h rows of w*channels bytes); runs without the GIL. */
static status_t decode(const jpeg_api_t *lib, const unsigned char *data, size_t size, int x0, int y0,
                       int x1, int y1, unsigned char *volatile *out, int *channels) {
    struct jpeg_decompress_struct cinfo;
    guard_t guard;
    JSAMPROW volatile row = NULL;
    volatile status_t status = REGION_FALLBACK;

    guard_errors(lib, &cinfo, &guard);
    if (setjmp(guard.jump)) {
        free(row);
        free(*out);
        *out = NULL;
        lib->jpeg_destroy_decompress(&cinfo);
        return status;
    }
    lib->jpeg_CreateDecompress(&cinfo, JPEG_LIB_VERSION, sizeof(struct jpeg_decompress_struct));
    lib->jpeg_mem_src(&cinfo, data, (unsigned long)size);
    lib->jpeg_read_header(&cinfo, TRUE);
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
    lib->jpeg_start_decompress(&cinfo);

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
        lib->jpeg_crop_scanline(&cinfo, &xoff, &width); /* widens further, to iMCU boundaries */
    size_t out_row = (size_t)(x1 - x0) * (size_t)*channels;
    row = malloc((size_t)width * (size_t)cinfo.output_components);
    *out = malloc(out_row * (size_t)(y1 - y0));
    if (row == NULL || *out == NULL) {
        status = REGION_NO_MEMORY;
        longjmp(guard.jump, 1);
    }
    if (y0 > 0)
        lib->jpeg_skip_scanlines(&cinfo, (JDIMENSION)y0);
    while (cinfo.output_scanline < (JDIMENSION)y1) {
        JDIMENSION y = cinfo.output_scanline;
        JSAMPROW rows[1] = {row};
        if (lib->jpeg_read_scanlines(&cinfo, rows, 1) != 1)
            longjmp(guard.jump, 1);
        memcpy(*out + (size_t)(y - (JDIMENSION)y0) * out_row,
               row + (size_t)((JDIMENSION)x0 - xoff) * (size_t)*channels, out_row);
    }
    /* Skipping to the very end would only mark the image done, never reading the rest of the
     * scan; skip all but the last row and decode that one, so damage below the box is seen. */
    if (cinfo.output_scanline + 1 < cinfo.output_height)
        lib->jpeg_skip_scanlines(&cinfo, cinfo.output_height - cinfo.output_scanline - 1);
    while (cinfo.output_scanline < cinfo.output_height) {
        JSAMPROW rows[1] = {row};
        if (lib->jpeg_read_scanlines(&cinfo, rows, 1) != 1)
            longjmp(guard.jump, 1);
    }
    lib->jpeg_finish_decompress(&cinfo);
    lib->jpeg_destroy_decompress(&cinfo);
    free(row);
    return REGION_OK;
}

static PyObject *decode_region(PyObject *self, PyObject *args) {
    Py_buffer buf;
    int x0, y0, x1, y1;
    (void)self;
    if (bound_handle == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "no libjpeg bound: call bind() first");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "y*(iiii)", &buf, &x0, &y0, &x1, &y1))
        return NULL;
    unsigned char *pixels = NULL;
    int channels = 0;
    status_t status;
    Py_BEGIN_ALLOW_THREADS
    status = decode(&api, buf.buf, (size_t)buf.len, x0, y0, x1, y1, &pixels, &channels);
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

/* Creates and destroys a decompressor: jpeg_CreateDecompress checks the library's ABI version
 * and struct size against ours, which is the only way to learn them from a 6.2 library. */
static int probe_abi(const jpeg_api_t *lib, char message[JMSG_LENGTH_MAX]) {
    struct jpeg_decompress_struct cinfo;
    guard_t guard;
    guard_errors(lib, &cinfo, &guard);
    if (setjmp(guard.jump)) {
        guard.pub.format_message((j_common_ptr)&cinfo, message);
        lib->jpeg_destroy_decompress(&cinfo);
        return 0;
    }
    lib->jpeg_CreateDecompress(&cinfo, JPEG_LIB_VERSION, sizeof(struct jpeg_decompress_struct));
    lib->jpeg_destroy_decompress(&cinfo);
    return 1;
}

/* Fills lib from handle and names the object the functions come from: one object, or a libjpeg
 * lacking jpeg_crop_scanline could borrow it from a dependency of another ABI. */
static int resolve(void *handle, const char *path, jpeg_api_t *lib, const char **object) {
    void *base = NULL;
    void *sym;
    Dl_info info;
#define RESOLVE(name)                                                                              \
    sym = dlsym(handle, #name);                                                                    \
    if (sym == NULL || !dladdr(sym, &info) || (base != NULL && info.dli_fbase != base)) {         \
        PyErr_Format(PyExc_OSError, "%s does not export " #name, path);                            \
        return 0;                                                                                  \
    }                                                                                              \
    base = info.dli_fbase;                                                                         \
    memcpy(&lib->name, &sym, sizeof sym); /* POSIX's dlsym idiom; ISO C has no such cast */
    JPEG_FUNCTIONS(RESOLVE)
#undef RESOLVE
    *object = info.dli_fname;
    char message[JMSG_LENGTH_MAX];
    if (!probe_abi(lib, message)) {
        PyErr_Format(PyExc_OSError, "%s lacks the ABI this module was built for (libjpeg %d): %s", path,
                     JPEG_LIB_VERSION, message);
        return 0;
    }
    return 1;
}

static PyObject *bind(PyObject *self, PyObject *arg) {
    PyObject *encoded;
    (void)self;
    if (!PyUnicode_FSConverter(arg, &encoded))
        return NULL;
    const char *path = PyBytes_AS_STRING(encoded);
    /* Pillow's copy is already loaded, so RTLD_NOLOAD finds it without mapping a second one. */
    void *handle = dlopen(path, RTLD_NOW | RTLD_LOCAL | RTLD_NOLOAD);
    if (handle == NULL)
        handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (handle == NULL) {
        PyErr_Format(PyExc_OSError, "cannot load %s: %s", path, dlerror());
        Py_DECREF(encoded);
        return NULL;
    }
    if (bound_handle != NULL) {
        /* Decodes running without the GIL read the table, so it never changes once set. */
        int same = handle == bound_handle;
        dlclose(handle);
        Py_DECREF(encoded);
        if (same)
            Py_RETURN_NONE;
        return PyErr_Format(PyExc_RuntimeError, "already bound to %S", bound_path);
    }
    jpeg_api_t lib;
    const char *object;
    int resolved = resolve(handle, path, &lib, &object);
    Py_DECREF(encoded);
    if (!resolved) {
        dlclose(handle);
        return NULL;
    }
    /* The file the functions live in, whatever name found it (a soname, a symlink). */
    bound_path = PyUnicode_DecodeFSDefault(object);
    if (bound_path == NULL) {
        dlclose(handle);
        return NULL;
    }
    api = lib;
    bound_handle = handle;
    Py_RETURN_NONE;
}

static PyObject *locate(PyObject *self, PyObject *arg) {
    PyObject *encoded;
    (void)self;
    if (!PyUnicode_FSConverter(arg, &encoded))
        return NULL;
    const char *path = PyBytes_AS_STRING(encoded);
    void *module = dlopen(path, RTLD_LAZY | RTLD_LOCAL | RTLD_NOLOAD);
    if (module == NULL) {
        PyErr_Format(PyExc_OSError, "%s is not loaded", path);
        Py_DECREF(encoded);
        return NULL;
    }
    /* The module's references bind as the dynamic linker binds them: the global scope first (a
     * libjpeg loaded with RTLD_GLOBAL would win), then the module's own dependencies. */
    void *sym = dlsym(RTLD_DEFAULT, "jpeg_CreateDecompress");
    if (sym == NULL)
        sym = dlsym(module, "jpeg_CreateDecompress");
    Dl_info info;
    PyObject *found = NULL;
    if (sym != NULL && dladdr(sym, &info) && info.dli_fname != NULL && info.dli_fname[0] != '\0')
        found = PyUnicode_DecodeFSDefault(info.dli_fname);
    else
        PyErr_Format(PyExc_OSError, "no libjpeg is loaded for %s", path);
    dlclose(module);
    Py_DECREF(encoded);
    return found;
}

static PyObject *library(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    if (bound_path == NULL)
        Py_RETURN_NONE;
    return Py_NewRef(bound_path);
}

static PyMethodDef methods[] = {
    {"decode_region", decode_region, METH_VARARGS,
     "decode_region(data, (left, top, right, bottom)) -> (pixels, channels) or None to fall back."},
    {"locate", locate, METH_O,
     "locate(module_path) -> path of the libjpeg that the loaded module's jpeg_* calls reach."},
    {"bind", bind, METH_O,
     "bind(library_path): take every libjpeg function from that library (once per process)."},
    {"library", library, METH_NOARGS, "library() -> the file of the bound libjpeg, or None."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, .m_name = "_jpegregion", .m_size = -1, .m_methods = methods,
};

PyMODINIT_FUNC PyInit__jpegregion(void) { return PyModule_Create(&module); }
