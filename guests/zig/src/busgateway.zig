//! The bus-gateway example app in Zig (examples/busgateway): the same
//! behaviour and log lines as guests/rust/examples/busgateway, so that the
//! registration scenario can run against either build.
//!
//! The app reads a bus of simulated temperature sensors and registers each
//! one, by its hardware id, as a device of its own (wg.Device.register). On
//! the bus device: `scan` registers the sensors that are not registered,
//! `unplug(hardware id)` unregisters one (wg.Device.unregister). On each
//! sensor: the writable `label`, and the `identify` action.

const std = @import("std");
const wg = @import("wasmgate");

comptime {
    wg.exportApp(BusGateway);
}

/// A sensor on the bus and the device it was registered as. Its strings
/// outlive calls: they are in wg.allocator.
const Sensor = struct {
    hardware_id: []const u8,
    device: ?wg.Device = null,
    label: []const u8,
    temperature: f64 = 20.0,
    step: u64 = 0,

    fn read(s: *Sensor) f64 {
        s.step += 1;
        var phase: u64 = 0;
        for (s.hardware_id) |b| phase += b;
        s.temperature = 20.0 + 3.0 * @sin((@as(f64, @floatFromInt(s.step)) + @as(f64, @floatFromInt(phase))) / 10.0);
        return @round(s.temperature * 100.0) / 100.0;
    }

    fn lessThan(_: void, a: Sensor, b: Sensor) bool {
        return std.mem.lessThan(u8, a.hardware_id, b.hardware_id);
    }
};

const BusGateway = struct {
    bus: wg.Device,
    /// In hardware id order, as the Rust build's map.
    sensors: []Sensor,

    pub fn init(config: wg.Config, previous: ?[]const u8) !BusGateway {
        _ = previous;
        const count = try config.uint("sensors", 4);
        const sensors = try wg.allocator.alloc(Sensor, std.math.cast(usize, count) orelse return error.OutOfMemory);
        for (sensors, 1..) |*s, n| {
            const hardware_id = try std.fmt.allocPrint(wg.allocator, "th-{d:0>2}", .{n});
            s.* = .{ .hardware_id = hardware_id, .label = try std.fmt.allocPrint(wg.allocator, "sensor {s}", .{hardware_id}) };
        }
        std.mem.sort(Sensor, sensors, {}, Sensor.lessThan);
        var app = BusGateway{ .bus = wg.Device.this(), .sensors = sensors };
        const registered = app.scan();
        wg.info("bus scanned: {d} sensors, {d} registered", .{ count, registered });
        return app;
    }

    /// Register every sensor on the bus that is not registered yet.
    fn scan(self: *BusGateway) usize {
        var registered: usize = 0;
        for (self.sensors, 0..) |*s, n| {
            if (s.device != null) continue;
            var serial_buf: [16]u8 = undefined;
            const serial = std.fmt.bufPrint(&serial_buf, "SN-{d:0>4}", .{1000 + n}) catch unreachable;
            const metadata = [_][2][]const u8{
                .{ "manufacturer", "Acme Sensors" },
                .{ "model_number", "TH-100" },
                .{ "serial_number", serial },
            };
            const device = wg.Device.register(s.hardware_id, "sensor", &metadata) catch |e| {
                wg.warn("sensor {s} not registered: {s}: {s}", .{ s.hardware_id, wg.kindName(e), wg.lastError() });
                continue;
            };
            wg.info("sensor {s} registered as {s}", .{ s.hardware_id, device.id() });
            s.device = device;
            registered += 1;
        }
        return registered;
    }

    fn byDevice(self: *BusGateway, device: []const u8) ?*Sensor {
        for (self.sensors) |*s| {
            if (s.device) |d| {
                if (std.mem.eql(u8, d.id(), device)) return s;
            }
        }
        return null;
    }

    pub fn save(self: *BusGateway) ?[]const u8 {
        _ = self;
        return null;
    }

    pub fn onTick(self: *BusGateway, now: u64) void {
        _ = now;
        var online: i64 = 0;
        for (self.sensors) |*s| {
            const value = s.read();
            const device = s.device orelse continue;
            online += 1;
            device.record("temperature", null, &.{wg.field("celsius", wg.number(value))}) catch
                wg.warn("{s}: record refused: {s}", .{ s.hardware_id, wg.lastError() });
            device.report(&.{ wg.field("temperature", wg.number(value)), wg.field("label", wg.text(s.label)) }) catch
                wg.warn("{s}: report refused: {s}", .{ s.hardware_id, wg.lastError() });
        }
        self.bus.report(&.{wg.field("sensors", wg.integer(online))}) catch
            wg.warn("bus report refused: {s}", .{wg.lastError()});
    }

    pub fn onDesired(self: *BusGateway, device: []const u8, changes: []const wg.Field) !void {
        const s = self.byDevice(device) orelse return wg.fail("{s} is not a sensor of this bus", .{device});
        for (changes) |change| {
            if (!std.mem.eql(u8, change.name, "label") or change.value != .text) {
                return wg.fail("{s} cannot be set", .{change.name});
            }
            const label = change.value.text;
            wg.info("{s} ({s}) label: {s}", .{ s.hardware_id, device, label });
            // The change's text lives for this call only: keep a copy.
            const kept = try wg.allocator.dupe(u8, label);
            wg.allocator.free(s.label);
            s.label = kept;
        }
    }

    pub fn onAction(self: *BusGateway, device: []const u8, name: []const u8, argument: ?wg.Value) !?wg.Value {
        const on_bus = std.mem.eql(u8, device, self.bus.id());
        if (std.mem.eql(u8, name, "scan") and on_bus) {
            return wg.integer(@intCast(self.scan()));
        }
        if (std.mem.eql(u8, name, "unplug") and on_bus and argument != null and argument.? == .text) {
            const hardware_id = argument.?.text;
            const s = for (self.sensors) |*s| {
                if (std.mem.eql(u8, s.hardware_id, hardware_id)) break s;
            } else return wg.fail("no sensor {s} on the bus", .{hardware_id});
            wg.Device.unregister(hardware_id) catch return wg.fail("{s}", .{wg.lastError()});
            if (s.device) |d| d.deinit();
            s.device = null;
            wg.info("sensor {s} unplugged", .{hardware_id});
            return wg.text(s.hardware_id);
        }
        if (std.mem.eql(u8, name, "identify")) {
            const s = self.byDevice(device) orelse return wg.fail("{s} is not a sensor of this bus", .{device});
            wg.info("{s} ({s}) identifies itself", .{ s.hardware_id, device });
            return wg.text(s.hardware_id);
        }
        return wg.fail("unknown action {s} on {s}", .{ name, device });
    }
};
