//! The Zig API of the wasmgate:device@0.1.0 `app` world. An app is a struct
//! with `init`, `save`, `onTick`, `onDesired` and `onAction`, exported with
//! one line:
//!
//!     comptime { wasmgate.exportApp(Thermostat); }
//!
//! Nothing here touches the canonical ABI: wit-bindgen's C generator makes
//! the bindings from the WIT at build time (out/bindings/app.{h,c}, the same
//! as the C guest's), `zig translate-c` turns app.h into the module `c`
//! (Zig 0.17 has no `@cImport`; translate-c is what it ran), and app.c is
//! compiled in. This file only turns Zig slices and unions into the
//! generated C types and back, and follows the C bindings' ownership rules
//! (guests/c/README.md) so that an app never has to.
//!
//! Memory: what the host hands in (export arguments, import results) lives
//! until the current export returns: slices the app gets are valid during
//! the current call only; copy what must outlive it.

const std = @import("std");
/// The generated C bindings (app.h through translate-c), for what this API
/// does not wrap.
pub const c = @import("c");

// --- Types -----------------------------------------------------------------

/// A typed value; the host checks it against the device model.
pub const Value = union(enum) {
    boolean: bool,
    integer: i64,
    number: f64,
    text: []const u8,
    bytes: []const u8,

    /// The value as an f64 for `number` and `integer` values.
    pub fn asF64(v: Value) ?f64 {
        return switch (v) {
            .number => |x| x,
            .integer => |i| @floatFromInt(i),
            else => null,
        };
    }
};

/// A named value of a report, point or alert.
pub const Field = struct { name: []const u8, value: Value };

pub fn field(name: []const u8, value: Value) Field {
    return .{ .name = name, .value = value };
}

pub fn number(x: f64) Value {
    return .{ .number = x };
}
pub fn integer(i: i64) Value {
    return .{ .integer = i };
}
pub fn boolean(b: bool) Value {
    return .{ .boolean = b };
}
pub fn text(s: []const u8) Value {
    return .{ .text = s };
}

/// Why the host refused a call; `lastError()` has the host's message.
pub const HostError = error{ Invalid, Limit, Unavailable };

/// The WIT name of a refusal: "invalid", "limit" or "unavailable".
pub fn kindName(e: HostError) []const u8 {
    return switch (e) {
        error.Invalid => "invalid",
        error.Limit => "limit",
        error.Unavailable => "unavailable",
    };
}

pub const Severity = enum(u8) { info, warning, critical };

pub const TimeUnit = enum(u8) { seconds, milliseconds, microseconds, nanoseconds };
pub const Time = struct { unit: TimeUnit, value: u64 };

pub const Level = enum(u8) { trace, debug, info, warn, err };

// --- Between these types and the generated ones ------------------------------

/// Memory for the current export: import arguments laid out for the C
/// bindings and copies of import results. Reset when the export returns.
var call_arena = std.heap.ArenaAllocator.init(std.heap.c_allocator);

/// Memory that lives until the current export returns.
pub fn callAllocator() std.mem.Allocator {
    return call_arena.allocator();
}

/// Memory for what outlives a call (the C library's malloc, which the
/// bindings use too).
pub const allocator = std.heap.c_allocator;

fn oom() noreturn {
    @trap();
}

/// A borrowed slice as a C binding string (or byte list). An empty slice
/// may carry any pointer in Zig; the host checks even an empty list's
/// bounds, so it gets a harmless one.
fn str(s: []const u8) c.app_string_t {
    return .{ .ptr = if (s.len == 0) @ptrFromInt(1) else @constCast(s.ptr), .len = s.len };
}

fn bytesOf(s: []const u8) c.app_list_u8_t {
    const as_str = str(s);
    return .{ .ptr = as_str.ptr, .len = as_str.len };
}

fn slice(s: anytype) []const u8 {
    return if (s.len == 0) "" else s.ptr[0..s.len];
}

/// A copy of a string the bindings handed over, in the call arena.
fn keep(s: anytype) []const u8 {
    return call_arena.allocator().dupe(u8, slice(s)) catch oom();
}

fn valueToC(v: Value) c.wasmgate_device_types_value_t {
    return switch (v) {
        .boolean => |b| .{ .tag = c.WASMGATE_DEVICE_TYPES_VALUE_BOOLEAN, .val = .{ .boolean = b } },
        .integer => |i| .{ .tag = c.WASMGATE_DEVICE_TYPES_VALUE_INTEGER, .val = .{ .integer = i } },
        .number => |x| .{ .tag = c.WASMGATE_DEVICE_TYPES_VALUE_NUMBER, .val = .{ .number = x } },
        .text => |s| .{ .tag = c.WASMGATE_DEVICE_TYPES_VALUE_TEXT, .val = .{ .text = str(s) } },
        .bytes => |s| .{ .tag = c.WASMGATE_DEVICE_TYPES_VALUE_BYTES, .val = .{ .bytes = bytesOf(s) } },
    };
}

/// A value the bindings own, as a Value whose text or bytes point into it.
fn valueFromC(v: c.wasmgate_device_types_value_t) Value {
    return switch (v.tag) {
        c.WASMGATE_DEVICE_TYPES_VALUE_BOOLEAN => .{ .boolean = v.val.boolean },
        c.WASMGATE_DEVICE_TYPES_VALUE_INTEGER => .{ .integer = v.val.integer },
        c.WASMGATE_DEVICE_TYPES_VALUE_NUMBER => .{ .number = v.val.number },
        c.WASMGATE_DEVICE_TYPES_VALUE_TEXT => .{ .text = slice(v.val.text) },
        else => .{ .bytes = slice(v.val.bytes) },
    };
}

/// Like valueFromC, with text and bytes copied into the call arena.
fn valueKept(v: c.wasmgate_device_types_value_t) Value {
    return switch (valueFromC(v)) {
        .text => |s| .{ .text = keep(s) },
        .bytes => |s| .{ .bytes = keep(s) },
        else => |other| other,
    };
}

fn fieldsToC(fields: []const Field) c.wasmgate_device_types_fields_t {
    const out = call_arena.allocator().alloc(c.wasmgate_device_types_tuple2_string_value_t, fields.len) catch oom();
    for (fields, out) |f, *o| o.* = .{ .f0 = str(f.name), .f1 = valueToC(f.value) };
    return .{ .ptr = out.ptr, .len = out.len };
}

fn fieldsFromC(fields: *const c.wasmgate_device_types_fields_t) []Field {
    const out = call_arena.allocator().alloc(Field, fields.len) catch oom();
    for (out, 0..) |*f, i| f.* = .{ .name = slice(fields.ptr[i].f0), .value = valueFromC(fields.ptr[i].f1) };
    return out;
}

fn timeToC(t: Time) c.wasmgate_device_types_time_t {
    return switch (t.unit) {
        .seconds => .{ .tag = c.WASMGATE_DEVICE_TYPES_TIME_SECONDS, .val = .{ .seconds = t.value } },
        .milliseconds => .{ .tag = c.WASMGATE_DEVICE_TYPES_TIME_MILLISECONDS, .val = .{ .milliseconds = t.value } },
        .microseconds => .{ .tag = c.WASMGATE_DEVICE_TYPES_TIME_MICROSECONDS, .val = .{ .microseconds = t.value } },
        .nanoseconds => .{ .tag = c.WASMGATE_DEVICE_TYPES_TIME_NANOSECONDS, .val = .{ .nanoseconds = t.value } },
    };
}

var last_error_buf: [512]u8 = undefined;
var last_error_len: usize = 0;

/// The host's message for the last refused call.
pub fn lastError() []const u8 {
    return last_error_buf[0..last_error_len];
}

/// A refused call: keep the message for lastError(), free the bindings' copy.
fn hostError(e: *c.wasmgate_device_types_error_t) HostError {
    defer c.wasmgate_device_types_error_free(e);
    const msg = slice(switch (e.tag) {
        c.WASMGATE_DEVICE_TYPES_ERROR_INVALID => e.val.invalid,
        c.WASMGATE_DEVICE_TYPES_ERROR_LIMIT => e.val.limit,
        else => e.val.unavailable,
    });
    last_error_len = @min(msg.len, last_error_buf.len);
    @memcpy(last_error_buf[0..last_error_len], msg[0..last_error_len]);
    return switch (e.tag) {
        c.WASMGATE_DEVICE_TYPES_ERROR_INVALID => error.Invalid,
        c.WASMGATE_DEVICE_TYPES_ERROR_LIMIT => error.Limit,
        else => error.Unavailable,
    };
}

/// A result<_, error> call's outcome.
fn check(ok: bool, err: *c.wasmgate_device_types_error_t) HostError!void {
    if (!ok) return hostError(err);
}

// --- The API -------------------------------------------------------------------

/// A device this app speaks for.
pub const Device = struct {
    handle: c.wasmgate_device_device_own_device_t,

    /// The device this app speaks for by default. Keep it; `deinit` drops it.
    pub fn this() Device {
        return .{ .handle = c.wasmgate_device_device_this_device() };
    }

    /// Register a device the app speaks for beside its own, by its hardware
    /// id; `model` names one of the app's `[app.models]` and `metadata`
    /// (manufacturer, serial number, ...) is announced to the cloud with it.
    /// The same hardware id always gives the same device. `deinit` drops
    /// the handle (the device stays registered).
    pub fn register(hardware_id: []const u8, model: []const u8, metadata: []const [2][]const u8) HostError!Device {
        const pairs = call_arena.allocator().alloc(c.app_tuple2_string_string_t, metadata.len) catch oom();
        for (metadata, pairs) |kv, *p| p.* = .{ .f0 = str(kv[0]), .f1 = str(kv[1]) };
        var list: c.app_list_tuple2_string_string_t = .{ .ptr = pairs.ptr, .len = pairs.len };
        var hw = str(hardware_id);
        var m = str(model);
        var handle: c.wasmgate_device_device_own_device_t = undefined;
        var err: c.wasmgate_device_types_error_t = undefined;
        try check(c.wasmgate_device_device_register(&hw, &m, &list, &handle, &err), &err);
        return .{ .handle = handle };
    }

    /// Stop speaking for a registered device: handles to it refuse every call.
    pub fn unregister(hardware_id: []const u8) HostError!void {
        var hw = str(hardware_id);
        var err: c.wasmgate_device_types_error_t = undefined;
        return check(c.wasmgate_device_device_unregister(&hw, &err), &err);
    }

    pub fn deinit(d: Device) void {
        c.wasmgate_device_device_device_drop_own(d.handle);
    }

    fn borrow(d: Device) c.wasmgate_device_device_borrow_device_t {
        return c.wasmgate_device_device_borrow_device(d.handle);
    }

    /// The device id (valid during the current call).
    pub fn id(d: Device) []const u8 {
        var ret: c.app_string_t = undefined;
        c.wasmgate_device_device_method_device_id(d.borrow(), &ret);
        defer c.app_string_free(&ret);
        return keep(ret);
    }

    /// Report attributes (all or nothing).
    pub fn report(d: Device, attributes: []const Field) HostError!void {
        var fields = fieldsToC(attributes);
        var err: c.wasmgate_device_types_error_t = undefined;
        return check(c.wasmgate_device_device_method_device_report(d.borrow(), &fields, &err), &err);
    }

    /// The last reported value of an attribute (valid during the current call).
    pub fn reported(d: Device, name: []const u8) ?Value {
        var n = str(name);
        var ret: c.wasmgate_device_types_value_t = undefined;
        if (!c.wasmgate_device_device_method_device_reported(d.borrow(), &n, &ret)) return null;
        defer c.wasmgate_device_types_value_free(&ret);
        return valueKept(ret);
    }

    /// The desired value of a writable attribute (valid during the current call).
    pub fn desired(d: Device, name: []const u8) ?Value {
        var n = str(name);
        var ret: c.wasmgate_device_types_value_t = undefined;
        if (!c.wasmgate_device_device_method_device_desired(d.borrow(), &n, &ret)) return null;
        defer c.wasmgate_device_types_value_free(&ret);
        return valueKept(ret);
    }

    /// Record one point of a time-series; `at == null` means now.
    pub fn record(d: Device, series: []const u8, at: ?Time, values: []const Field) HostError!void {
        var s = str(series);
        var t: c.wasmgate_device_types_time_t = if (at) |a| timeToC(a) else undefined;
        var fields = fieldsToC(values);
        var err: c.wasmgate_device_types_error_t = undefined;
        return check(c.wasmgate_device_device_method_device_record(d.borrow(), &s, if (at != null) &t else null, &fields, &err), &err);
    }

    pub const Point = struct { at: ?Time, values: []const Field };

    /// Record several points of one series (all or nothing).
    pub fn recordBatch(d: Device, series: []const u8, points: []const Point) HostError!void {
        const out = call_arena.allocator().alloc(c.wasmgate_device_types_point_t, points.len) catch oom();
        for (points, out) |p, *o| o.* = .{
            .at = if (p.at) |t| .{ .is_some = true, .val = timeToC(t) } else .{ .is_some = false },
            .values = fieldsToC(p.values),
        };
        var list: c.wasmgate_device_device_list_point_t = .{ .ptr = out.ptr, .len = out.len };
        var s = str(series);
        var err: c.wasmgate_device_types_error_t = undefined;
        return check(c.wasmgate_device_device_method_device_record_batch(d.borrow(), &s, &list, &err), &err);
    }

    /// Raise an alert declared in the model.
    pub fn alert(d: Device, name: []const u8, severity: Severity, values: []const Field) HostError!void {
        var n = str(name);
        var fields = fieldsToC(values);
        var err: c.wasmgate_device_types_error_t = undefined;
        return check(c.wasmgate_device_device_method_device_alert(d.borrow(), &n, @backingInt(severity), &fields, &err), &err);
    }
};

/// Durable key-value storage private to the app.
pub const storage = struct {
    /// The value under `key` (valid during the current call), or null.
    pub fn get(key: []const u8) HostError!?[]const u8 {
        var k = str(key);
        var ret: c.app_option_list_u8_t = undefined;
        var err: c.wasmgate_device_types_error_t = undefined;
        try check(c.wasmgate_device_storage_get(&k, &ret, &err), &err);
        if (!ret.is_some) return null;
        defer c.app_list_u8_free(&ret.val);
        return keep(ret.val);
    }

    pub fn set(key: []const u8, value: []const u8) HostError!void {
        var k = str(key);
        var v = bytesOf(value);
        var err: c.wasmgate_device_types_error_t = undefined;
        return check(c.wasmgate_device_storage_set(&k, &v, &err), &err);
    }

    pub fn delete(key: []const u8) HostError!void {
        var k = str(key);
        var err: c.wasmgate_device_types_error_t = undefined;
        return check(c.wasmgate_device_storage_delete(&k, &err), &err);
    }

    /// The keys that start with `prefix` (valid during the current call).
    pub fn keys(prefix: []const u8) HostError![]const []const u8 {
        var p = str(prefix);
        var ret: c.app_list_string_t = undefined;
        var err: c.wasmgate_device_types_error_t = undefined;
        try check(c.wasmgate_device_storage_keys(&p, &ret, &err), &err);
        defer c.app_list_string_free(&ret);
        const out = call_arena.allocator().alloc([]const u8, ret.len) catch oom();
        for (out, 0..) |*o, i| o.* = keep(ret.ptr[i]);
        return out;
    }

    /// At most `limit` (capped at 1,000) keys that start with `prefix` and
    /// come after `after` ("" to start), in byte order (valid during the
    /// current call). A shorter page is the end.
    pub fn keysPage(prefix: []const u8, after: []const u8, limit: u32) HostError![]const []const u8 {
        var p = str(prefix);
        var a = str(after);
        var ret: c.app_list_string_t = undefined;
        var err: c.wasmgate_device_types_error_t = undefined;
        try check(c.wasmgate_device_storage_keys_page(&p, &a, limit, &ret, &err), &err);
        defer c.app_list_string_free(&ret);
        const out = call_arena.allocator().alloc([]const u8, ret.len) catch oom();
        for (out, 0..) |*o, i| o.* = keep(ret.ptr[i]);
        return out;
    }

    // Analysed even while no app calls it.
    comptime {
        _ = &keysPage;
    }
};

/// Large content to and from the cloud (files, firmware, logs).
pub const content = struct {
    pub const Direction = enum(u8) { upload, download };

    pub const State = union(enum) {
        running,
        done,
        failed: []const u8,
    };

    pub const Transfer = struct {
        id: []const u8,
        name: []const u8,
        direction: Direction,
        /// Bytes in all.
        size: u64,
        /// Bytes confirmed so far.
        transferred: u64,
        state: State,
    };

    /// Upload a file of the app's own directory (`path` relative to it) as
    /// `name`; the host takes a copy at once. Returns the transfer's id
    /// (valid during the current call).
    pub fn uploadFile(name: []const u8, path: []const u8) HostError![]const u8 {
        var n = str(name);
        var p = str(path);
        var ret: c.app_string_t = undefined;
        var err: c.wasmgate_device_types_error_t = undefined;
        try check(c.wasmgate_device_content_upload_file(&n, &p, &ret, &err), &err);
        defer c.app_string_free(&ret);
        return keep(ret);
    }

    /// Upload `bytes` as `name`, as uploadFile does.
    pub fn uploadBytes(name: []const u8, bytes: []const u8) HostError![]const u8 {
        var n = str(name);
        var b = bytesOf(bytes);
        var ret: c.app_string_t = undefined;
        var err: c.wasmgate_device_types_error_t = undefined;
        try check(c.wasmgate_device_content_upload_bytes(&n, &b, &ret, &err), &err);
        defer c.app_string_free(&ret);
        return keep(ret);
    }

    /// The app's transfers, newest first (valid during the current call).
    pub fn transfers() []const Transfer {
        var ret: c.wasmgate_device_content_list_transfer_t = undefined;
        c.wasmgate_device_content_transfers(&ret);
        defer c.wasmgate_device_content_list_transfer_free(&ret);
        const out = call_arena.allocator().alloc(Transfer, ret.len) catch oom();
        for (out, 0..) |*o, i| {
            const t = &ret.ptr[i];
            o.* = .{
                .id = keep(t.id),
                .name = keep(t.name),
                .direction = if (t.direction == c.WASMGATE_DEVICE_CONTENT_DIRECTION_UPLOAD) .upload else .download,
                .size = t.size,
                .transferred = t.transferred,
                .state = switch (t.state.tag) {
                    c.WASMGATE_DEVICE_CONTENT_STATE_RUNNING => .running,
                    c.WASMGATE_DEVICE_CONTENT_STATE_DONE => .done,
                    else => .{ .failed = keep(t.state.val.failed) },
                },
            };
        }
        return out;
    }
};

/// Write a formatted line to the app's log (longer lines are cut at 1 KiB).
pub fn print(level: Level, comptime fmt: []const u8, args: anytype) void {
    var buf: [1024]u8 = undefined;
    const line = std.fmt.bufPrint(&buf, fmt, args) catch @as([]u8, &buf);
    var message = str(line);
    c.wasmgate_device_log_log(@backingInt(level), &message);
}

pub fn info(comptime fmt: []const u8, args: anytype) void {
    print(.info, fmt, args);
}
pub fn warn(comptime fmt: []const u8, args: anytype) void {
    print(.warn, fmt, args);
}

var fail_buf: [512]u8 = undefined;
var fail_len: usize = 0;

/// Fail the current export with a formatted message: `return wasmgate.fail("bad {s}", .{x});`
pub fn fail(comptime fmt: []const u8, args: anytype) error{Failed} {
    fail_len = (std.fmt.bufPrint(&fail_buf, fmt, args) catch @as([]u8, &fail_buf)).len;
    return error.Failed;
}

fn errorMessage(err: anyerror) []const u8 {
    if (err == error.Failed) return fail_buf[0..fail_len];
    return switch (err) {
        error.Invalid, error.Limit, error.Unavailable => lastError(),
        else => @errorName(err),
    };
}

/// The app's configuration: the key/values given in gateway.toml.
pub const Config = struct {
    pairs: []const c.app_tuple2_string_string_t,

    pub fn get(cfg: Config, key: []const u8) ?[]const u8 {
        for (cfg.pairs) |kv| {
            if (std.mem.eql(u8, slice(kv.f0), key)) return slice(kv.f1);
        }
        return null;
    }

    /// `key` as an f64, `default` if not given; a failure naming the key if it does not parse.
    pub fn float(cfg: Config, key: []const u8, default: f64) error{Failed}!f64 {
        const raw = cfg.get(key) orelse return default;
        return std.fmt.parseFloat(f64, raw) catch fail("config key {s}: cannot parse \"{s}\" as a number", .{ key, raw });
    }

    /// `key` as a u64, `default` if not given.
    pub fn uint(cfg: Config, key: []const u8, default: u64) error{Failed}!u64 {
        const raw = cfg.get(key) orelse return default;
        return std.fmt.parseInt(u64, raw, 10) catch fail("config key {s}: cannot parse \"{s}\" as an unsigned integer", .{ key, raw });
    }
};

// --- Exports -------------------------------------------------------------------

/// Bytes for a result the bindings free after the host has copied it
/// (their post-return functions call free): a malloc'ed copy.
fn mallocDupe(s: []const u8) c.app_list_u8_t {
    if (s.len == 0) return bytesOf("");
    const ptr: [*]u8 = @ptrCast(std.c.malloc(s.len) orelse oom());
    @memcpy(ptr[0..s.len], s);
    return .{ .ptr = ptr, .len = s.len };
}

fn stringResult(msg: []const u8, out: *c.app_string_t) void {
    const copy = mallocDupe(msg);
    out.* = .{ .ptr = copy.ptr, .len = copy.len };
}

/// Export `T` as the component's `app` world: the five `exports_app_*`
/// functions the C bindings call. `T` has:
///   pub fn init(config: Config, previous: ?[]const u8) !T
///   pub fn save(self: *T) ?[]const u8
///   pub fn onTick(self: *T, now: u64) void
///   pub fn onDesired(self: *T, device: []const u8, changes: []const Field) !void
///   pub fn onAction(self: *T, device: []const u8, name: []const u8, argument: ?Value) !?Value
/// Export arguments belong to these functions in the C bindings: they are
/// freed (with the bindings' free functions) when the export returns.
pub fn exportApp(comptime T: type) void {
    const E = struct {
        var app: T = undefined;

        fn end() void {
            _ = call_arena.reset(.retain_capacity);
        }

        fn init(config: *c.app_list_tuple2_string_string_t, maybe_previous: ?*c.app_list_u8_t, err: *c.app_string_t) callconv(.c) bool {
            defer end();
            defer c.app_list_tuple2_string_string_free(config);
            defer if (maybe_previous) |p| c.app_list_u8_free(p);
            const previous: ?[]const u8 = if (maybe_previous) |p| slice(p.*) else null;
            const pairs: []const c.app_tuple2_string_string_t = if (config.len == 0) &.{} else config.ptr[0..config.len];
            app = T.init(.{ .pairs = pairs }, previous) catch |e| {
                stringResult(errorMessage(e), err);
                return false;
            };
            return true;
        }

        fn save(ret: *c.app_list_u8_t) callconv(.c) bool {
            defer end();
            const state = app.save() orelse return false;
            ret.* = mallocDupe(state);
            return true;
        }

        fn onTick(now: u64) callconv(.c) void {
            defer end();
            app.onTick(now);
        }

        fn onDesired(device: *c.app_string_t, changes: *c.wasmgate_device_types_fields_t, err: *c.app_string_t) callconv(.c) bool {
            defer end();
            defer c.app_string_free(device);
            defer c.wasmgate_device_types_fields_free(changes);
            app.onDesired(slice(device.*), fieldsFromC(changes)) catch |e| {
                stringResult(errorMessage(e), err);
                return false;
            };
            return true;
        }

        fn onAction(device: *c.app_string_t, name: *c.app_string_t, maybe_argument: ?*c.wasmgate_device_types_value_t, ret: *c.app_option_value_t, err: *c.app_string_t) callconv(.c) bool {
            defer end();
            defer c.app_string_free(device);
            defer c.app_string_free(name);
            defer if (maybe_argument) |a| c.wasmgate_device_types_value_free(a);
            const argument: ?Value = if (maybe_argument) |a| valueFromC(a.*) else null;
            const result = app.onAction(slice(device.*), slice(name.*), argument) catch |e| {
                stringResult(errorMessage(e), err);
                return false;
            };
            ret.* = .{ .is_some = result != null };
            if (result) |v| {
                // Text and bytes go back to the host after this call: copies
                // the bindings free once the host has them.
                ret.val = valueToC(switch (v) {
                    .text => |s| .{ .text = slice(mallocDupe(s)) },
                    .bytes => |s| .{ .bytes = slice(mallocDupe(s)) },
                    else => v,
                });
            }
            return true;
        }
    };
    @export(&E.init, .{ .name = "exports_app_init" });
    @export(&E.save, .{ .name = "exports_app_save" });
    @export(&E.onTick, .{ .name = "exports_app_on_tick" });
    @export(&E.onDesired, .{ .name = "exports_app_on_desired" });
    @export(&E.onAction, .{ .name = "exports_app_on_action" });
}
