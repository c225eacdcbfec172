// The thermostat example app in C: the same behaviour as
// guests/rust/thermostat, value for value.
//
// On every tick it reads a simulated room sensor, records a `climate` point
// (temperature, humidity), switches the heating with a little hysteresis and
// reports its attributes. The cloud can change the `setpoint` attribute and
// call the `reset` action, which zeroes the tick counter kept in storage.

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "wasmgate.h"

// Storage key of the tick counter (u64, little endian).
#define TICKS_KEY "ticks"

// A room whose temperature drifts toward the outside when the heating is off
// and warms up when it is on; a deterministic pseudo-random wobble on top.
typedef struct {
    double temperature;
    uint64_t seed;
    uint64_t step;
} room_t;

static struct {
    wasmgate_device_device_own_device_t device;
    room_t sensor;
    double setpoint;
    bool heating;
    uint64_t ticks;
    double overheat_at;
} app;

static double round2(double x) { return round(x * 100.0) / 100.0; }

static void room_next(room_t *r, bool heating, double *temperature, double *humidity) {
    // xorshift64: deterministic, no imports needed.
    r->seed ^= r->seed << 13;
    r->seed ^= r->seed >> 7;
    r->seed ^= r->seed << 17;
    double noise = (double)(r->seed % 1000) / 1000.0 - 0.5;
    r->step += 1;
    r->temperature += (heating ? 0.4 : -0.25) + noise * 0.1;
    double h = 45.0 + 8.0 * sin((double)r->step / 10.0) + noise;
    *temperature = round2(r->temperature);
    *humidity = round2(h);
}

// Little-endian on every wasm target: memcpy is the conversion.
static bool store_ticks(uint64_t ticks, wg_error_t *err) {
    uint8_t bytes[8];
    memcpy(bytes, &ticks, 8);
    app_string_t key = wg_str(TICKS_KEY);
    app_list_u8_t value = {bytes, 8};
    return wasmgate_device_storage_set(&key, &value, err);
}

static uint64_t load_ticks(void) {
    app_string_t key = wg_str(TICKS_KEY);
    app_option_list_u8_t got;
    wg_error_t err;
    uint64_t ticks = 0;
    if (!wasmgate_device_storage_get(&key, &got, &err)) {
        wasmgate_device_types_error_free(&err);
        return 0;
    }
    if (got.is_some) {
        if (got.val.len == 8) memcpy(&ticks, got.val.ptr, 8);
        app_list_u8_free(&got.val);
    }
    return ticks;
}

// Config key `key` as a double; false (with `err` set) if it does not parse.
static bool config_double(app_list_tuple2_string_string_t *config, const char *key, double fallback, double *out,
                          app_string_t *err) {
    char buf[64], *end;
    if (!wg_config_get(config, key, buf, sizeof buf)) {
        *out = fallback;
        return true;
    }
    *out = strtod(buf, &end);
    if (end == buf || *end != 0) {
        wg_set_err(err, "config key %s: cannot parse \"%s\" as a number", key, buf);
        return false;
    }
    return true;
}

static bool config_u64(app_list_tuple2_string_string_t *config, const char *key, uint64_t fallback, uint64_t *out,
                       app_string_t *err) {
    char buf[64], *end;
    if (!wg_config_get(config, key, buf, sizeof buf)) {
        *out = fallback;
        return true;
    }
    errno = 0;
    *out = strtoull(buf, &end, 10);
    if (end == buf || *end != 0 || buf[0] == '-' || errno != 0) {
        wg_set_err(err, "config key %s: cannot parse \"%s\" as an unsigned integer", key, buf);
        return false;
    }
    return true;
}

bool exports_app_init(app_list_tuple2_string_string_t *config, app_list_u8_t *maybe_previous, app_string_t *err) {
    bool ok = false;
    app.device = wasmgate_device_device_this_device();
    wg_device_t device = wasmgate_device_device_borrow_device(app.device);

    app.setpoint = 21.0;
    app_string_t name = wg_str("setpoint");
    wg_value_t desired;
    if (wasmgate_device_device_method_device_desired(device, &name, &desired)) {
        wg_as_number(&desired, &app.setpoint);
        wasmgate_device_types_value_free(&desired);
    }
    // A hot swap hands over the room temperature; otherwise start from config.
    if (maybe_previous && maybe_previous->len == 8) {
        memcpy(&app.sensor.temperature, maybe_previous->ptr, 8);
    } else if (!config_double(config, "start_temperature", 18.0, &app.sensor.temperature, err)) {
        goto out;
    }
    if (!config_u64(config, "seed", 0x5eed, &app.sensor.seed, err)) goto out;
    if (app.sensor.seed == 0) app.sensor.seed = 1;
    app.sensor.step = 0;
    app.heating = false;
    app.ticks = load_ticks();
    if (!config_double(config, "overheat_at", 28.0, &app.overheat_at, err)) goto out;

    app_string_t id;
    wasmgate_device_device_method_device_id(device, &id);
    wg_info("thermostat on %.*s: setpoint %.1f °C, %" PRIu64 " ticks so far", (int)id.len, (const char *)id.ptr,
            app.setpoint, app.ticks);
    app_string_free(&id);
    ok = true;
out:
    // Arguments of exports belong to the callee.
    app_list_tuple2_string_string_free(config);
    if (maybe_previous) app_list_u8_free(maybe_previous);
    return ok;
}

bool exports_app_save(app_list_u8_t *ret) {
    ret->ptr = malloc(8);
    ret->len = 8;
    memcpy(ret->ptr, &app.sensor.temperature, 8);
    return true;
}

void exports_app_on_tick(app_timestamp_t now) {
    (void)now;
    wg_device_t device = wasmgate_device_device_borrow_device(app.device);
    double temperature, humidity;
    room_next(&app.sensor, app.heating, &temperature, &humidity);
    // Hysteresis of half a degree either side of the setpoint.
    if (temperature < app.setpoint - 0.5) {
        app.heating = true;
    } else if (temperature > app.setpoint + 0.5) {
        app.heating = false;
    }
    app.ticks += 1;
    wg_error_t err;
    if (!store_ticks(app.ticks, &err)) wg_warn_error("could not store the tick counter", &err);

    wg_field_t point[] = {
        wg_field("temperature", wg_number(temperature)),
        wg_field("humidity", wg_number(humidity)),
    };
    app_string_t climate = wg_str("climate");
    wg_fields_t values = WG_FIELDS(point);
    if (!wasmgate_device_device_method_device_record(device, &climate, NULL, &values, &err))
        wg_warn_error("record refused", &err);

    wg_field_t attributes[] = {
        wg_field("temperature", wg_number(temperature)),
        wg_field("heating", wg_boolean(app.heating)),
        wg_field("setpoint", wg_number(app.setpoint)),
        wg_field("ticks", wg_integer((int64_t)app.ticks)),
    };
    wg_fields_t report = WG_FIELDS(attributes);
    if (!wasmgate_device_device_method_device_report(device, &report, &err)) wg_warn_error("report refused", &err);

    if (temperature > app.overheat_at) {
        wg_field_t alert_values[] = {wg_field("temperature", wg_number(temperature))};
        wg_fields_t alert = WG_FIELDS(alert_values);
        app_string_t overheat = wg_str("overheat");
        if (!wasmgate_device_device_method_device_alert(device, &overheat, WASMGATE_DEVICE_TYPES_SEVERITY_WARNING,
                                                        &alert, &err))
            wg_warn_error("alert refused", &err);
    }
    wg_info("tick %" PRIu64 ": %.2f °C, %.1f %% rh, heating %s (setpoint %.1f °C)", app.ticks, temperature, humidity,
            app.heating ? "on" : "off", app.setpoint);
}

bool exports_app_on_desired(app_string_t *device, app_fields_t *changes, app_string_t *err) {
    bool ok = true;
    for (size_t i = 0; i < changes->len; i++) {
        double setpoint;
        app_string_t *name = &changes->ptr[i].f0;
        if (wg_str_eq(name, "setpoint") && wg_as_number(&changes->ptr[i].f1, &setpoint)) {
            wg_info("setpoint changed %.1f -> %.1f °C", app.setpoint, setpoint);
            app.setpoint = setpoint;
        } else {
            wg_set_err(err, "cannot apply %.*s", (int)name->len, (const char *)name->ptr);
            ok = false;
            break;
        }
    }
    app_string_free(device);
    app_fields_free(changes);
    return ok;
}

bool exports_app_on_action(app_string_t *device, app_string_t *name, app_value_t *maybe_argument,
                           app_option_value_t *ret, app_string_t *err) {
    bool ok = false;
    if (!wg_str_eq(name, "reset")) {
        wg_set_err(err, "unknown action %.*s", (int)name->len, (const char *)name->ptr);
        goto out;
    }
    uint64_t before = app.ticks;
    app.ticks = 0;
    wg_error_t e;
    if (!store_ticks(0, &e)) {
        // The error's message becomes the action's error.
        *err = e.val.invalid;
        goto out;
    }
    wg_info("reset: tick counter was %" PRIu64, before);
    ret->is_some = true;
    ret->val = wg_integer((int64_t)before);
    ok = true;
out:
    app_string_free(device);
    app_string_free(name);
    if (maybe_argument) app_value_free(maybe_argument);
    return ok;
}
