// A thin layer over the C bindings that wit-bindgen generates for the
// `wasmgate:device` world (out/bindings/app.h, made by guests/build c):
// building fields, logging with printf formats, reading values and errors.
#ifndef WASMGATE_H
#define WASMGATE_H

#include <stdbool.h>
#include <stdint.h>
#include <stddef.h>

#include "app.h"

typedef wasmgate_device_types_value_t wg_value_t;
typedef wasmgate_device_types_fields_t wg_fields_t;
typedef wasmgate_device_types_tuple2_string_value_t wg_field_t;
typedef wasmgate_device_types_error_t wg_error_t;
typedef wasmgate_device_device_borrow_device_t wg_device_t;

// A string that borrows `s` (a C string): for arguments of imported functions.
app_string_t wg_str(const char *s);

// Values. `wg_text` borrows its argument.
wg_value_t wg_number(double x);
wg_value_t wg_integer(int64_t x);
wg_value_t wg_boolean(bool b);
wg_value_t wg_text(const char *s);

// A field that borrows `name`: `wg_field("temperature", wg_number(21.5))`.
wg_field_t wg_field(const char *name, wg_value_t value);

// Fields over an array: `WG_FIELDS(array)`.
#define WG_FIELDS(array) ((wg_fields_t){(array), sizeof(array) / sizeof((array)[0])})

// The value as a double for `number` and `integer` values.
bool wg_as_number(const wg_value_t *value, double *out);

// Whether an app_string_t equals a C string.
bool wg_str_eq(const app_string_t *s, const char *c);

// "invalid" / "limit" / "unavailable", and the host's message (not NUL-terminated).
const char *wg_error_kind(const wg_error_t *e);

// Log lines with printf formats.
void wg_log(wasmgate_device_log_level_t level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define wg_info(...) wg_log(WASMGATE_DEVICE_LOG_LEVEL_INFO, __VA_ARGS__)
#define wg_warn(...) wg_log(WASMGATE_DEVICE_LOG_LEVEL_WARN, __VA_ARGS__)
#define wg_error(...) wg_log(WASMGATE_DEVICE_LOG_LEVEL_ERROR, __VA_ARGS__)

// Log a refused call: "<what>: <kind>: <message>", then free the error.
void wg_warn_error(const char *what, wg_error_t *e);

// Set an export's error string (owned by the host after return) with a printf format.
void wg_set_err(app_string_t *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

// The value of config key `key` as a NUL-terminated copy in `buf`; false if absent.
bool wg_config_get(const app_list_tuple2_string_string_t *config, const char *key, char *buf, size_t size);

#endif
