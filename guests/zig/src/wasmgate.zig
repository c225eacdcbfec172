//! The Zig binding of the wasmgate:device@0.1.0 `app` world, written by hand
//! (wit-bindgen has no Zig generator). An app is a struct with `init`,
//! `save`, `onTick`, `onDesired` and `onAction`, exported with one line:
//!
//!     comptime { wasmgate.exportApp(Thermostat); }
//!
//! Build for wasm32-freestanding (no WASI needed), embed the WIT and make a
//! component: `guests/build zig` does all three.
//!
//! Memory: what the host hands in (export arguments, import results) lives in
//! a per-call arena that is reset when the export returns: slices the app
//! gets are valid during the current call only; copy what must outlive it.

const std = @import("std");

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

pub const Severity = enum(u8) { info, warning, critical };

pub const TimeUnit = enum(u8) { seconds, milliseconds, microseconds, nanoseconds };
pub const Time = struct { unit: TimeUnit, value: u64 };

pub const Level = enum(u8) { trace, debug, info, warn, err };

// --- The canonical ABI's memory layouts (wasm32) ----------------------------

const Str = extern struct {
    ptr: [*]const u8,
    len: usize,

    fn of(s: []const u8) Str {
        return .{ .ptr = if (s.len == 0) @ptrFromInt(1) else s.ptr, .len = s.len };
    }
    fn slice(s: Str) []const u8 {
        return s.ptr[0..s.len];
    }
};

const RawValue = extern struct {
    tag: u8,
    payload: extern union { boolean: u8, integer: i64, number: f64, str: Str },

    fn of(v: Value) RawValue {
        return switch (v) {
            .boolean => |b| .{ .tag = 0, .payload = .{ .boolean = @intFromBool(b) } },
            .integer => |i| .{ .tag = 1, .payload = .{ .integer = i } },
            .number => |x| .{ .tag = 2, .payload = .{ .number = x } },
            .text => |s| .{ .tag = 3, .payload = .{ .str = Str.of(s) } },
            .bytes => |s| .{ .tag = 4, .payload = .{ .str = Str.of(s) } },
        };
    }
    fn value(r: RawValue) Value {
        return switch (r.tag) {
            0 => .{ .boolean = r.payload.boolean != 0 },
            1 => .{ .integer = r.payload.integer },
            2 => .{ .number = r.payload.number },
            3 => .{ .text = r.payload.str.slice() },
            else => .{ .bytes = r.payload.str.slice() },
        };
    }
};

const RawField = extern struct { name: Str, value: RawValue };
const RawError = extern struct { tag: u8, message: Str };
const ResultVoid = extern struct { is_err: u8, err: RawError };
const OptionValue = extern struct { is_some: u8, value: RawValue };
const OptionTime = extern struct { is_some: u8, time: extern struct { tag: u8, value: u64 } };
const RawPoint = extern struct { at: OptionTime, values: extern struct { ptr: [*]const RawField, len: usize } };
const ResultOptionBytes = extern struct { is_err: u8, payload: extern union { ok: extern struct { is_some: u8, bytes: Str }, err: RawError } };
const ResultStrings = extern struct { is_err: u8, payload: extern union { ok: extern struct { ptr: [*]const Str, len: usize }, err: RawError } };
const ResultString = extern struct { is_err: u8, err: Str };
const OptionBytes = extern struct { is_some: u8, bytes: Str };
const ResultOptionValue = extern struct { is_err: u8, payload: extern union { ok: OptionValue, err: Str } };

comptime {
    std.debug.assert(@sizeOf(RawValue) == 16);
    std.debug.assert(@sizeOf(RawField) == 24);
    std.debug.assert(@sizeOf(ResultVoid) == 16);
    std.debug.assert(@sizeOf(OptionValue) == 24);
    std.debug.assert(@sizeOf(RawPoint) == 32);
    std.debug.assert(@sizeOf(ResultOptionValue) == 32);
    std.debug.assert(@offsetOf(ResultOptionValue, "payload") == 8);
}

// --- Memory ------------------------------------------------------------------

var call_arena = std.heap.ArenaAllocator.init(std.heap.wasm_allocator);
var return_arena = std.heap.ArenaAllocator.init(std.heap.wasm_allocator);

/// Memory that lives until the current export returns.
pub fn callAllocator() std.mem.Allocator {
    return call_arena.allocator();
}

fn cabiRealloc(old_ptr: ?[*]u8, old_size: usize, alignment: usize, new_size: usize) callconv(.c) ?[*]u8 {
    if (new_size == 0) return @ptrFromInt(alignment);
    const a = call_arena.allocator();
    const ptr = a.rawAlloc(new_size, std.mem.Alignment.fromByteUnits(alignment), @returnAddress()) orelse @trap();
    if (old_ptr) |old| @memcpy(ptr[0..@min(old_size, new_size)], old[0..@min(old_size, new_size)]);
    return ptr;
}

comptime {
    @export(&cabiRealloc, .{ .name = "cabi_realloc" });
}

fn rawFields(fields: []const Field) []RawField {
    const raw = call_arena.allocator().alloc(RawField, fields.len) catch @trap();
    for (fields, raw) |f, *r| r.* = .{ .name = Str.of(f.name), .value = RawValue.of(f.value) };
    return raw;
}

fn fieldsOf(ptr: [*]const RawField, len: usize) []Field {
    const fields = call_arena.allocator().alloc(Field, len) catch @trap();
    for (fields, ptr[0..len]) |*f, r| f.* = .{ .name = r.name.slice(), .value = r.value.value() };
    return fields;
}

var last_error_buf: [512]u8 = undefined;
var last_error_len: usize = 0;

/// The host's message for the last refused call.
pub fn lastError() []const u8 {
    return last_error_buf[0..last_error_len];
}

fn check(r: ResultVoid) HostError!void {
    if (r.is_err == 0) return;
    return hostError(r.err);
}

fn hostError(e: RawError) HostError {
    const msg = e.message.slice();
    last_error_len = @min(msg.len, last_error_buf.len);
    @memcpy(last_error_buf[0..last_error_len], msg[0..last_error_len]);
    return switch (e.tag) {
        0 => error.Invalid,
        1 => error.Limit,
        else => error.Unavailable,
    };
}

// --- Imports -----------------------------------------------------------------

const dev = struct {
    extern "wasmgate:device/device@0.1.0" fn @"this-device"() u32;
    extern "wasmgate:device/device@0.1.0" fn @"[resource-drop]device"(handle: u32) void;
    extern "wasmgate:device/device@0.1.0" fn @"[method]device.id"(self: u32, ret: *Str) void;
    extern "wasmgate:device/device@0.1.0" fn @"[method]device.report"(self: u32, ptr: [*]const RawField, len: usize, ret: *ResultVoid) void;
    extern "wasmgate:device/device@0.1.0" fn @"[method]device.reported"(self: u32, ptr: [*]const u8, len: usize, ret: *OptionValue) void;
    extern "wasmgate:device/device@0.1.0" fn @"[method]device.desired"(self: u32, ptr: [*]const u8, len: usize, ret: *OptionValue) void;
    extern "wasmgate:device/device@0.1.0" fn @"[method]device.record"(self: u32, sptr: [*]const u8, slen: usize, at_is_some: u32, at_tag: u32, at_value: u64, ptr: [*]const RawField, len: usize, ret: *ResultVoid) void;
    extern "wasmgate:device/device@0.1.0" fn @"[method]device.record-batch"(self: u32, sptr: [*]const u8, slen: usize, ptr: [*]const RawPoint, len: usize, ret: *ResultVoid) void;
    extern "wasmgate:device/device@0.1.0" fn @"[method]device.alert"(self: u32, nptr: [*]const u8, nlen: usize, severity: u32, ptr: [*]const RawField, len: usize, ret: *ResultVoid) void;
};

const sto = struct {
    extern "wasmgate:device/storage@0.1.0" fn get(kptr: [*]const u8, klen: usize, ret: *ResultOptionBytes) void;
    extern "wasmgate:device/storage@0.1.0" fn set(kptr: [*]const u8, klen: usize, vptr: [*]const u8, vlen: usize, ret: *ResultVoid) void;
    extern "wasmgate:device/storage@0.1.0" fn delete(kptr: [*]const u8, klen: usize, ret: *ResultVoid) void;
    extern "wasmgate:device/storage@0.1.0" fn keys(pptr: [*]const u8, plen: usize, ret: *ResultStrings) void;
};

extern "wasmgate:device/log@0.1.0" fn log(level: u32, ptr: [*]const u8, len: usize) void;

// --- The API -------------------------------------------------------------------

/// A device this app speaks for.
pub const Device = struct {
    handle: u32,

    /// The device this app speaks for by default. Keep it; `deinit` drops it.
    pub fn this() Device {
        return .{ .handle = dev.@"this-device"() };
    }

    pub fn deinit(d: Device) void {
        dev.@"[resource-drop]device"(d.handle);
    }

    /// The device id (valid during the current call).
    pub fn id(d: Device) []const u8 {
        var ret: Str = undefined;
        dev.@"[method]device.id"(d.handle, &ret);
        return ret.slice();
    }

    /// Report attributes (all or nothing).
    pub fn report(d: Device, attributes: []const Field) HostError!void {
        const raw = rawFields(attributes);
        var ret: ResultVoid = undefined;
        dev.@"[method]device.report"(d.handle, raw.ptr, raw.len, &ret);
        return check(ret);
    }

    /// The last reported value of an attribute.
    pub fn reported(d: Device, name: []const u8) ?Value {
        var ret: OptionValue = undefined;
        const n = Str.of(name);
        dev.@"[method]device.reported"(d.handle, n.ptr, n.len, &ret);
        return if (ret.is_some != 0) ret.value.value() else null;
    }

    /// The desired value of a writable attribute.
    pub fn desired(d: Device, name: []const u8) ?Value {
        var ret: OptionValue = undefined;
        const n = Str.of(name);
        dev.@"[method]device.desired"(d.handle, n.ptr, n.len, &ret);
        return if (ret.is_some != 0) ret.value.value() else null;
    }

    /// Record one point of a time-series; `at == null` means now.
    pub fn record(d: Device, series: []const u8, at: ?Time, values: []const Field) HostError!void {
        const raw = rawFields(values);
        const s = Str.of(series);
        var ret: ResultVoid = undefined;
        const t = at orelse Time{ .unit = .seconds, .value = 0 };
        dev.@"[method]device.record"(d.handle, s.ptr, s.len, @intFromBool(at != null), @backingInt(t.unit), t.value, raw.ptr, raw.len, &ret);
        return check(ret);
    }

    pub const Point = struct { at: ?Time, values: []const Field };

    /// Record several points of one series (all or nothing).
    pub fn recordBatch(d: Device, series: []const u8, points: []const Point) HostError!void {
        const raw = call_arena.allocator().alloc(RawPoint, points.len) catch @trap();
        for (points, raw) |p, *r| {
            const values = rawFields(p.values);
            r.* = std.mem.zeroes(RawPoint);
            if (p.at) |t| r.at = .{ .is_some = 1, .time = .{ .tag = @backingInt(t.unit), .value = t.value } };
            r.values = .{ .ptr = values.ptr, .len = values.len };
        }
        const s = Str.of(series);
        var ret: ResultVoid = undefined;
        dev.@"[method]device.record-batch"(d.handle, s.ptr, s.len, raw.ptr, raw.len, &ret);
        return check(ret);
    }

    /// Raise an alert declared in the model.
    pub fn alert(d: Device, name: []const u8, severity: Severity, values: []const Field) HostError!void {
        const raw = rawFields(values);
        const n = Str.of(name);
        var ret: ResultVoid = undefined;
        dev.@"[method]device.alert"(d.handle, n.ptr, n.len, @backingInt(severity), raw.ptr, raw.len, &ret);
        return check(ret);
    }
};

/// Durable key-value storage private to the app.
pub const storage = struct {
    /// The value under `key` (valid during the current call), or null.
    pub fn get(key: []const u8) HostError!?[]const u8 {
        var ret: ResultOptionBytes = undefined;
        const k = Str.of(key);
        sto.get(k.ptr, k.len, &ret);
        if (ret.is_err != 0) return hostError(ret.payload.err);
        return if (ret.payload.ok.is_some != 0) ret.payload.ok.bytes.slice() else null;
    }

    pub fn set(key: []const u8, value: []const u8) HostError!void {
        var ret: ResultVoid = undefined;
        const k = Str.of(key);
        const v = Str.of(value);
        sto.set(k.ptr, k.len, v.ptr, v.len, &ret);
        return check(ret);
    }

    pub fn delete(key: []const u8) HostError!void {
        var ret: ResultVoid = undefined;
        const k = Str.of(key);
        sto.delete(k.ptr, k.len, &ret);
        return check(ret);
    }

    /// The keys that start with `prefix` (valid during the current call).
    pub fn keys(prefix: []const u8) HostError![]const []const u8 {
        var ret: ResultStrings = undefined;
        const p = Str.of(prefix);
        sto.keys(p.ptr, p.len, &ret);
        if (ret.is_err != 0) return hostError(ret.payload.err);
        const list = ret.payload.ok.ptr[0..ret.payload.ok.len];
        const out = call_arena.allocator().alloc([]const u8, list.len) catch @trap();
        for (list, out) |s, *o| o.* = s.slice();
        return out;
    }
};

/// Write a formatted line to the app's log (longer lines are cut at 1 KiB).
pub fn print(level: Level, comptime fmt: []const u8, args: anytype) void {
    var buf: [1024]u8 = undefined;
    const line = std.fmt.bufPrint(&buf, fmt, args) catch @as([]u8, &buf);
    log(@backingInt(level), line.ptr, line.len);
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
    pairs: []const [2]Str,

    pub fn get(c: Config, key: []const u8) ?[]const u8 {
        for (c.pairs) |kv| {
            if (std.mem.eql(u8, kv[0].slice(), key)) return kv[1].slice();
        }
        return null;
    }

    /// `key` as an f64, `default` if not given; a failure naming the key if it does not parse.
    pub fn float(c: Config, key: []const u8, default: f64) error{Failed}!f64 {
        const raw = c.get(key) orelse return default;
        return std.fmt.parseFloat(f64, raw) catch fail("config key {s}: cannot parse \"{s}\" as a number", .{ key, raw });
    }

    /// `key` as a u64, `default` if not given.
    pub fn uint(c: Config, key: []const u8, default: u64) error{Failed}!u64 {
        const raw = c.get(key) orelse return default;
        return std.fmt.parseInt(u64, raw, 10) catch fail("config key {s}: cannot parse \"{s}\" as an unsigned integer", .{ key, raw });
    }
};

// --- Exports -------------------------------------------------------------------

fn returnString(is_err: bool, msg: []const u8) *ResultString {
    const ret = return_arena.allocator().create(ResultString) catch @trap();
    const copy = return_arena.allocator().dupe(u8, msg) catch @trap();
    ret.* = .{ .is_err = @intFromBool(is_err), .err = Str.of(copy) };
    return ret;
}

/// Export `T` as the component's `app` world. `T` has:
///   pub fn init(config: Config, previous: ?[]const u8) !T
///   pub fn save(self: *T) ?[]const u8
///   pub fn onTick(self: *T, now: u64) void
///   pub fn onDesired(self: *T, device: []const u8, changes: []const Field) !void
///   pub fn onAction(self: *T, device: []const u8, name: []const u8, argument: ?Value) !?Value
pub fn exportApp(comptime T: type) void {
    const E = struct {
        var app: T = undefined;

        // Each export starts by freeing what its previous call returned, and
        // ends by freeing what the host handed it during this call.
        fn begin() void {
            _ = return_arena.reset(.retain_capacity);
        }
        fn end() void {
            _ = call_arena.reset(.retain_capacity);
        }

        fn init(cptr: [*]const [2]Str, clen: usize, prev_is_some: u32, pptr: [*]const u8, plen: usize) callconv(.c) *ResultString {
            begin();
            defer end();
            const previous: ?[]const u8 = if (prev_is_some != 0) pptr[0..plen] else null;
            app = T.init(.{ .pairs = cptr[0..clen] }, previous) catch |err| return returnString(true, errorMessage(err));
            return returnString(false, "");
        }

        fn save() callconv(.c) *OptionBytes {
            begin();
            defer end();
            const ret = return_arena.allocator().create(OptionBytes) catch @trap();
            if (app.save()) |state| {
                ret.* = .{ .is_some = 1, .bytes = Str.of(return_arena.allocator().dupe(u8, state) catch @trap()) };
            } else {
                ret.* = .{ .is_some = 0, .bytes = Str.of("") };
            }
            return ret;
        }

        fn onTick(now: u64) callconv(.c) void {
            begin();
            defer end();
            app.onTick(now);
        }

        fn onDesired(dptr: [*]const u8, dlen: usize, fptr: [*]const RawField, flen: usize) callconv(.c) *ResultString {
            begin();
            defer end();
            app.onDesired(dptr[0..dlen], fieldsOf(fptr, flen)) catch |err| return returnString(true, errorMessage(err));
            return returnString(false, "");
        }

        fn onAction(dptr: [*]const u8, dlen: usize, nptr: [*]const u8, nlen: usize, arg_is_some: u32, arg_tag: u32, arg_payload: u64, arg_len: usize) callconv(.c) *ResultOptionValue {
            begin();
            defer end();
            var argument: ?Value = null;
            if (arg_is_some != 0) {
                const str_ptr: [*]const u8 = @ptrFromInt(@as(usize, @truncate(arg_payload)));
                argument = switch (arg_tag) {
                    0 => .{ .boolean = arg_payload != 0 },
                    1 => .{ .integer = @bitCast(arg_payload) },
                    2 => .{ .number = @bitCast(arg_payload) },
                    3 => .{ .text = str_ptr[0..arg_len] },
                    else => .{ .bytes = str_ptr[0..arg_len] },
                };
            }
            const ra = return_arena.allocator();
            const ret = ra.create(ResultOptionValue) catch @trap();
            ret.* = std.mem.zeroes(ResultOptionValue);
            const result = app.onAction(dptr[0..dlen], nptr[0..nlen], argument) catch |err| {
                ret.is_err = 1;
                ret.payload = .{ .err = Str.of(ra.dupe(u8, errorMessage(err)) catch @trap()) };
                return ret;
            };
            if (result) |v| {
                // Text and bytes results must outlive this call: copy them.
                const kept: Value = switch (v) {
                    .text => |s| .{ .text = ra.dupe(u8, s) catch @trap() },
                    .bytes => |s| .{ .bytes = ra.dupe(u8, s) catch @trap() },
                    else => v,
                };
                ret.payload = .{ .ok = .{ .is_some = 1, .value = RawValue.of(kept) } };
            }
            return ret;
        }
    };
    @export(&E.init, .{ .name = "init" });
    @export(&E.save, .{ .name = "save" });
    @export(&E.onTick, .{ .name = "on-tick" });
    @export(&E.onDesired, .{ .name = "on-desired" });
    @export(&E.onAction, .{ .name = "on-action" });
}
