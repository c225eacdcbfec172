// {{name}}: a wasmgate app in C, made by `wasmgate new` as a place to start.
//
// A room thermostat: on every tick it heats the room while it is colder than
// the setpoint (and lets it cool otherwise), records a `climate` point and
// reports its attributes. The cloud may change `setpoint`; `save` hands the
// room's temperature to the next instance.
//
// The rules of the generated bindings (out/bindings/app.h): export arguments
// belong to the export (free them); strings and lists it returns must be
// malloc'ed, the host frees them; import arguments are borrowed, import
// results are the caller's to free.

#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "wasmgate.h"

static struct {
    // The app's own device: one handle for the app's life.
    wasmgate_device_device_own_device_t device;
    double temperature;
    double setpoint;
    bool heating;
    int64_t ticks;
} app;

static double round2(double x) { return round(x * 100.0) / 100.0; }

bool exports_app_init(app_list_tuple2_string_string_t *config, app_list_u8_t *maybe_previous, app_string_t *err) {
    bool ok = false;
    app.device = wasmgate_device_device_this_device();
    wg_device_t device = wasmgate_device_device_borrow_device(app.device);

    app.setpoint = 21.0;
    app_string_t setpoint = wg_str("setpoint");
    wg_value_t desired;
    if (wasmgate_device_device_method_device_desired(device, &setpoint, &desired)) {
        wg_as_number(&desired, &app.setpoint);
        wasmgate_device_types_value_free(&desired);
    }
    // The instance before this one handed over the room's temperature; a
    // first start takes it from the config.
    char text[64], *end;
    if (maybe_previous && maybe_previous->len == 8) {
        memcpy(&app.temperature, maybe_previous->ptr, 8);
    } else if (wg_config_get(config, "start_temperature", text, sizeof text)) {
        app.temperature = strtod(text, &end);
        if (end == text || *end != 0) {
            wg_set_err(err, "config key start_temperature: cannot parse \"%s\" as a number", text);
            goto out;
        }
    } else {
        app.temperature = 18.0;
    }
    app.heating = false;
    app.ticks = 0;

    app_string_t id;
    wasmgate_device_device_method_device_id(device, &id);
    wg_info("started on %.*s: %.2f °C, setpoint %.1f °C", (int)id.len, (const char *)id.ptr, app.temperature,
            app.setpoint);
    app_string_free(&id);
    ok = true;
out:
    app_list_tuple2_string_string_free(config);
    if (maybe_previous) app_list_u8_free(maybe_previous);
    return ok;
}

bool exports_app_save(app_list_u8_t *ret) {
    ret->ptr = malloc(8);
    ret->len = 8;
    memcpy(ret->ptr, &app.temperature, 8);
    return true;
}

void exports_app_on_tick(app_timestamp_t now) {
    (void)now;
    wg_device_t device = wasmgate_device_device_borrow_device(app.device);
    app.heating = app.temperature < app.setpoint;
    app.temperature = round2(app.temperature + (app.heating ? 0.5 : -0.25));
    app.ticks += 1;

    wg_error_t err;
    wg_field_t point[] = {wg_field("temperature", wg_number(app.temperature))};
    app_string_t climate = wg_str("climate");
    wg_fields_t values = WG_FIELDS(point);
    if (!wasmgate_device_device_method_device_record(device, &climate, NULL, &values, &err))
        wg_warn_error("record refused", &err);

    wg_field_t attributes[] = {
        wg_field("temperature", wg_number(app.temperature)),
        wg_field("heating", wg_boolean(app.heating)),
        wg_field("setpoint", wg_number(app.setpoint)),
        wg_field("ticks", wg_integer(app.ticks)),
    };
    wg_fields_t report = WG_FIELDS(attributes);
    if (!wasmgate_device_device_method_device_report(device, &report, &err)) wg_warn_error("report refused", &err);

    wg_info("tick %" PRId64 ": %.2f °C, heating %s (setpoint %.1f °C)", app.ticks, app.temperature,
            app.heating ? "on" : "off", app.setpoint);
}

bool exports_app_on_desired(app_string_t *device, app_fields_t *changes, app_string_t *err) {
    bool ok = true;
    for (size_t i = 0; i < changes->len; i++) {
        double setpoint;
        app_string_t *name = &changes->ptr[i].f0;
        if (!wg_str_eq(name, "setpoint") || !wg_as_number(&changes->ptr[i].f1, &setpoint)) {
            wg_set_err(err, "cannot apply %.*s", (int)name->len, (const char *)name->ptr);
            ok = false;
            break;
        }
        wg_info("setpoint changed %.1f -> %.1f °C", app.setpoint, setpoint);
        app.setpoint = setpoint;
    }
    app_string_free(device);
    app_fields_free(changes);
    return ok;
}

bool exports_app_on_action(app_string_t *device, app_string_t *name, app_value_t *maybe_argument,
                           app_option_value_t *ret, app_string_t *err) {
    (void)ret;
    wg_set_err(err, "no action %.*s", (int)name->len, (const char *)name->ptr);
    app_string_free(device);
    app_string_free(name);
    if (maybe_argument) app_value_free(maybe_argument);
    return false;
}
