// Duktape, the JavaScript engine PAC files run in (duktape-dev), for PortcullisPAC.
// Duktape's API has macros Swift cannot import; the few PortcullisPAC needs are wrapped here.
#ifndef PORTCULLIS_CDUKTAPE_SHIM_H
#define PORTCULLIS_CDUKTAPE_SHIM_H
#include <duktape.h>

/// Compiles `source` as a program named `filename`; leaves the function (or the error) on the stack.
static inline duk_int_t portcullis_duk_pcompile(duk_context *ctx, const char *source, duk_size_t length,
                                                const char *filename) {
    duk_push_string(ctx, filename);
    return duk_pcompile_lstring_filename(ctx, 0, source, length);
}

/// ToString() that never throws (an error while converting gives a fixed string).
static inline const char *portcullis_duk_safe_to_lstring(duk_context *ctx, duk_idx_t index, duk_size_t *length) {
    return duk_safe_to_lstring(ctx, index, length);
}

static inline duk_int_t portcullis_duk_varargs(void) { return DUK_VARARGS; }
#endif
