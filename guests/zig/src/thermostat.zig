//! The thermostat example app in Zig: the same behaviour as
//! guests/rust/thermostat, value for value.
//!
//! On every tick it reads a simulated room sensor, records a `climate` point
//! (temperature, humidity), switches the heating with a little hysteresis and
//! reports its attributes. The cloud can change the `setpoint` attribute and
//! call the `reset` action, which zeroes the tick counter kept in storage.

const std = @import("std");
const wg = @import("wasmgate");

comptime {
    wg.exportApp(Thermostat);
}

/// Storage key of the tick counter (u64, little endian).
const ticks_key = "ticks";

/// A room whose temperature drifts toward the outside when the heating is off
/// and warms up when it is on; a deterministic pseudo-random wobble on top.
const Room = struct {
    temperature: f64,
    seed: u64,
    step: u64 = 0,

    fn next(r: *Room, heating: bool) [2]f64 {
        // xorshift64: deterministic, no imports needed.
        r.seed ^= r.seed << 13;
        r.seed ^= r.seed >> 7;
        r.seed ^= r.seed << 17;
        const noise = @as(f64, @floatFromInt(r.seed % 1000)) / 1000.0 - 0.5;
        r.step += 1;
        r.temperature += @as(f64, if (heating) 0.4 else -0.25) + noise * 0.1;
        const humidity = 45.0 + 8.0 * @sin(@as(f64, @floatFromInt(r.step)) / 10.0) + noise;
        return .{ round2(r.temperature), round2(humidity) };
    }
};

fn round2(x: f64) f64 {
    return @round(x * 100.0) / 100.0;
}

fn loadTicks() u64 {
    const bytes = (wg.storage.get(ticks_key) catch return 0) orelse return 0;
    if (bytes.len != 8) return 0;
    return std.mem.readInt(u64, bytes[0..8], .little);
}

fn storeTicks(ticks: u64) wg.HostError!void {
    var bytes: [8]u8 = undefined;
    std.mem.writeInt(u64, &bytes, ticks, .little);
    return wg.storage.set(ticks_key, &bytes);
}

const Thermostat = struct {
    device: wg.Device,
    sensor: Room,
    setpoint: f64,
    heating: bool = false,
    ticks: u64,
    overheat_at: f64,

    pub fn init(config: wg.Config, previous: ?[]const u8) !Thermostat {
        const device = wg.Device.this();
        const setpoint = if (device.desired("setpoint")) |v| v.asF64() orelse 21.0 else 21.0;
        // A hot swap hands over the room temperature; otherwise start from config.
        const temperature = if (previous != null and previous.?.len == 8)
            @as(f64, @bitCast(std.mem.readInt(u64, previous.?[0..8], .little)))
        else
            try config.float("start_temperature", 18.0);
        const app = Thermostat{
            .device = device,
            .sensor = .{ .temperature = temperature, .seed = @max(try config.uint("seed", 0x5eed), 1) },
            .setpoint = setpoint,
            .ticks = loadTicks(),
            .overheat_at = try config.float("overheat_at", 28.0),
        };
        wg.info("thermostat on {s}: setpoint {d:.1} °C, {d} ticks so far", .{ device.id(), app.setpoint, app.ticks });
        return app;
    }

    var saved: [8]u8 = undefined;

    pub fn save(self: *Thermostat) ?[]const u8 {
        std.mem.writeInt(u64, &saved, @bitCast(self.sensor.temperature), .little);
        return &saved;
    }

    pub fn onTick(self: *Thermostat, now: u64) void {
        _ = now;
        const reading = self.sensor.next(self.heating);
        const temperature = reading[0];
        const humidity = reading[1];
        // Hysteresis of half a degree either side of the setpoint.
        if (temperature < self.setpoint - 0.5) {
            self.heating = true;
        } else if (temperature > self.setpoint + 0.5) {
            self.heating = false;
        }
        self.ticks += 1;
        storeTicks(self.ticks) catch |e| wg.warn("could not store the tick counter: {s}: {s}", .{ @errorName(e), wg.lastError() });

        self.device.record("climate", null, &.{
            wg.field("temperature", wg.number(temperature)),
            wg.field("humidity", wg.number(humidity)),
        }) catch |e| wg.warn("record refused: {s}: {s}", .{ @errorName(e), wg.lastError() });
        self.device.report(&.{
            wg.field("temperature", wg.number(temperature)),
            wg.field("heating", wg.boolean(self.heating)),
            wg.field("setpoint", wg.number(self.setpoint)),
            wg.field("ticks", wg.integer(@intCast(self.ticks))),
        }) catch |e| wg.warn("report refused: {s}: {s}", .{ @errorName(e), wg.lastError() });
        if (temperature > self.overheat_at) {
            self.device.alert("overheat", .warning, &.{wg.field("temperature", wg.number(temperature))}) catch |e|
                wg.warn("alert refused: {s}: {s}", .{ @errorName(e), wg.lastError() });
        }
        wg.info("tick {d}: {d:.2} °C, {d:.1} % rh, heating {s} (setpoint {d:.1} °C)", .{
            self.ticks, temperature, humidity, if (self.heating) "on" else "off", self.setpoint,
        });
    }

    pub fn onDesired(self: *Thermostat, device: []const u8, changes: []const wg.Field) !void {
        _ = device;
        for (changes) |change| {
            const setpoint = change.value.asF64();
            if (!std.mem.eql(u8, change.name, "setpoint") or setpoint == null) {
                return wg.fail("cannot apply {s}", .{change.name});
            }
            wg.info("setpoint changed {d:.1} -> {d:.1} °C", .{ self.setpoint, setpoint.? });
            self.setpoint = setpoint.?;
        }
    }

    pub fn onAction(self: *Thermostat, device: []const u8, name: []const u8, argument: ?wg.Value) !?wg.Value {
        _ = device;
        _ = argument;
        if (!std.mem.eql(u8, name, "reset")) return wg.fail("unknown action {s}", .{name});
        const before = self.ticks;
        self.ticks = 0;
        try storeTicks(0);
        wg.info("reset: tick counter was {d}", .{before});
        return wg.integer(@intCast(before));
    }
};
