#include "wasmgate.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

app_string_t wg_str(const char *s) {
    return (app_string_t){(uint8_t *)s, strlen(s)};
}

wg_value_t wg_number(double x) {
    wg_value_t v = {.tag = WASMGATE_DEVICE_TYPES_VALUE_NUMBER};
    v.val.number = x;
    return v;
}

wg_value_t wg_integer(int64_t x) {
    wg_value_t v = {.tag = WASMGATE_DEVICE_TYPES_VALUE_INTEGER};
    v.val.integer = x;
    return v;
}

wg_value_t wg_boolean(bool b) {
    wg_value_t v = {.tag = WASMGATE_DEVICE_TYPES_VALUE_BOOLEAN};
    v.val.boolean = b;
    return v;
}

wg_value_t wg_text(const char *s) {
    wg_value_t v = {.tag = WASMGATE_DEVICE_TYPES_VALUE_TEXT};
    v.val.text = wg_str(s);
    return v;
}

wg_field_t wg_field(const char *name, wg_value_t value) {
    return (wg_field_t){wg_str(name), value};
}

bool wg_as_number(const wg_value_t *value, double *out) {
    switch (value->tag) {
    case WASMGATE_DEVICE_TYPES_VALUE_NUMBER:
        *out = value->val.number;
        return true;
    case WASMGATE_DEVICE_TYPES_VALUE_INTEGER:
        *out = (double)value->val.integer;
        return true;
    default:
        return false;
    }
}

bool wg_str_eq(const app_string_t *s, const char *c) {
    size_t n = strlen(c);
    return s->len == n && memcmp(s->ptr, c, n) == 0;
}

const char *wg_error_kind(const wg_error_t *e) {
    switch (e->tag) {
    case WASMGATE_DEVICE_TYPES_ERROR_INVALID: return "invalid";
    case WASMGATE_DEVICE_TYPES_ERROR_LIMIT: return "limit";
    default: return "unavailable";
    }
}

void wg_log(wasmgate_device_log_level_t level, const char *fmt, ...) {
    char line[1024];
    va_list args;
    va_start(args, fmt);
    int n = vsnprintf(line, sizeof line, fmt, args);
    va_end(args);
    if (n < 0) return;
    app_string_t message = {(uint8_t *)line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1};
    wasmgate_device_log_log(level, &message);
}

void wg_warn_error(const char *what, wg_error_t *e) {
    // Every case of the error variant holds a string in the same place.
    wg_warn("%s: %s: %.*s", what, wg_error_kind(e), (int)e->val.invalid.len, (const char *)e->val.invalid.ptr);
    wasmgate_device_types_error_free(e);
}

void wg_set_err(app_string_t *err, const char *fmt, ...) {
    char text[512];
    va_list args;
    va_start(args, fmt);
    vsnprintf(text, sizeof text, fmt, args);
    va_end(args);
    app_string_dup(err, text);
}

bool wg_config_get(const app_list_tuple2_string_string_t *config, const char *key, char *buf, size_t size) {
    for (size_t i = 0; i < config->len; i++) {
        if (wg_str_eq(&config->ptr[i].f0, key)) {
            const app_string_t *v = &config->ptr[i].f1;
            size_t n = v->len < size - 1 ? v->len : size - 1;
            memcpy(buf, v->ptr, n);
            buf[n] = 0;
            return true;
        }
    }
    return false;
}
