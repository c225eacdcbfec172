//! {{name}}: a wasmgate app in Zig, made by `wasmgate new` as a place to start.
//!
//! A room thermostat: on every tick it heats the room while it is colder
//! than the setpoint (and lets it cool otherwise), records a `climate` point
//! and reports its attributes. The cloud may change `setpoint`; `save` hands
//! the room's temperature to the next instance.

const std = @import("std");
const wg = @import("wasmgate");

comptime {
    wg.exportApp(Room);
}

fn round2(x: f64) f64 {
    return @round(x * 100.0) / 100.0;
}

const Room = struct {
    /// The app's own device: one handle for the app's life.
    device: wg.Device,
    temperature: f64,
    setpoint: f64,
    heating: bool = false,
    ticks: i64 = 0,

    pub fn init(config: wg.Config, previous: ?[]const u8) !Room {
        const device = wg.Device.this();
        const setpoint = if (device.desired("setpoint")) |v| v.asF64() orelse 21.0 else 21.0;
        // The instance before this one handed over the room's temperature; a
        // first start takes it from the config.
        const temperature = if (previous != null and previous.?.len == 8)
            @as(f64, @bitCast(std.mem.readInt(u64, previous.?[0..8], .little)))
        else
            try config.float("start_temperature", 18.0);
        wg.info("started on {s}: {d:.2} °C, setpoint {d:.1} °C", .{ device.id(), temperature, setpoint });
        return .{ .device = device, .temperature = temperature, .setpoint = setpoint };
    }

    var saved: [8]u8 = undefined;

    pub fn save(self: *Room) ?[]const u8 {
        std.mem.writeInt(u64, &saved, @bitCast(self.temperature), .little);
        return &saved;
    }

    pub fn onTick(self: *Room, now: u64) void {
        _ = now;
        self.heating = self.temperature < self.setpoint;
        self.temperature = round2(self.temperature + @as(f64, if (self.heating) 0.5 else -0.25));
        self.ticks += 1;
        self.device.record("climate", null, &.{
            wg.field("temperature", wg.number(self.temperature)),
        }) catch |e| wg.warn("record refused: {s}: {s}", .{ wg.kindName(e), wg.lastError() });
        self.device.report(&.{
            wg.field("temperature", wg.number(self.temperature)),
            wg.field("heating", wg.boolean(self.heating)),
            wg.field("setpoint", wg.number(self.setpoint)),
            wg.field("ticks", wg.integer(self.ticks)),
        }) catch |e| wg.warn("report refused: {s}: {s}", .{ wg.kindName(e), wg.lastError() });
        wg.info("tick {d}: {d:.2} °C, heating {s} (setpoint {d:.1} °C)", .{
            self.ticks, self.temperature, if (self.heating) "on" else "off", self.setpoint,
        });
    }

    pub fn onDesired(self: *Room, device: []const u8, changes: []const wg.Field) !void {
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

    pub fn onAction(self: *Room, device: []const u8, name: []const u8, argument: ?wg.Value) !?wg.Value {
        _ = self;
        _ = device;
        _ = argument;
        return wg.fail("no action {s}", .{name});
    }
};
