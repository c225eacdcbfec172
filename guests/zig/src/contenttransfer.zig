//! A test guest in Zig, after guests/rust/test-guests/content-transfer but
//! without files (this build has no WASI filesystem): on its first start
//! it uploads `upload_kib` KiB of deterministic bytes as `data.bin` with
//! wg.content.uploadBytes; on every tick it logs each transfer whose
//! progress changed (wg.content.transfers). The action `upload-bytes(text)`
//! uploads the text as `note.txt` and returns the transfer's id. The same
//! log lines as guests/go/contenttransfer.

const std = @import("std");
const wg = @import("wasmgate");

comptime {
    wg.exportApp(ContentTransfer);
}

/// `len` bytes of xorshift64, the Rust guest's data.bin.
fn data(len: usize) ![]u8 {
    const out = try wg.callAllocator().alloc(u8, len);
    var seed: u64 = 0x9e3779b97f4a7c15;
    for (out) |*b| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        b.* = @truncate(seed);
    }
    return out;
}

const ContentTransfer = struct {
    /// The last line logged for each transfer, by id (in wg.allocator).
    seen: std.StringHashMapUnmanaged([]const u8) = .empty,

    pub fn init(config: wg.Config, previous: ?[]const u8) !ContentTransfer {
        _ = previous;
        const kib = try config.uint("upload_kib", 0);
        const uploaded = wg.storage.get("uploaded") catch return wg.fail("{s}", .{wg.lastError()});
        if (kib > 0 and uploaded == null) {
            const id = wg.content.uploadBytes("data.bin", try data(std.math.cast(usize, kib << 10) orelse return error.OutOfMemory)) catch |e|
                return wg.fail("upload refused: {s}: {s}", .{ wg.kindName(e), wg.lastError() });
            wg.storage.set("uploaded", id) catch return wg.fail("{s}", .{wg.lastError()});
            wg.info("upload of data.bin queued as {s}", .{id});
        }
        return .{};
    }

    pub fn save(self: *ContentTransfer) ?[]const u8 {
        _ = self;
        return null;
    }

    pub fn onTick(self: *ContentTransfer, now: u64) void {
        _ = now;
        self.logTransfers() catch |e| wg.warn("transfers: {s}", .{@errorName(e)});
    }

    fn logTransfers(self: *ContentTransfer) !void {
        const call = wg.callAllocator();
        for (wg.content.transfers()) |t| {
            const state = switch (t.state) {
                .running => "running",
                .done => "done",
                .failed => |why| try std.fmt.allocPrint(call, "failed: {s}", .{why}),
            };
            const line = try std.fmt.allocPrint(call, "{s} {s} {s} {d}/{d} {s}", .{
                @tagName(t.direction), t.id, t.name, t.transferred, t.size, state,
            });
            const entry = try self.seen.getOrPut(wg.allocator, t.id);
            if (entry.found_existing) {
                if (std.mem.eql(u8, entry.value_ptr.*, line)) continue;
                wg.allocator.free(entry.value_ptr.*);
            } else {
                entry.key_ptr.* = try wg.allocator.dupe(u8, t.id);
            }
            entry.value_ptr.* = try wg.allocator.dupe(u8, line);
            wg.info("transfer {s}", .{line});
        }
    }

    pub fn onDesired(self: *ContentTransfer, device: []const u8, changes: []const wg.Field) !void {
        _ = self;
        _ = device;
        _ = changes;
        return wg.fail("nothing to set", .{});
    }

    pub fn onAction(self: *ContentTransfer, device: []const u8, name: []const u8, argument: ?wg.Value) !?wg.Value {
        _ = self;
        _ = device;
        if (!std.mem.eql(u8, name, "upload-bytes") or argument == null or argument.? != .text) {
            return wg.fail("unknown action {s}", .{name});
        }
        const id = wg.content.uploadBytes("note.txt", argument.?.text) catch |e|
            return wg.fail("{s}: {s}", .{ wg.kindName(e), wg.lastError() });
        return wg.text(id);
    }
};
