"""The thermostat example app in Python: the same behaviour as
guests/rust/thermostat, value for value.

On every tick it reads a simulated room sensor, records a `climate` point
(temperature, humidity), switches the heating with a little hysteresis and
reports its attributes. The cloud can change the `setpoint` attribute and
call the `reset` action, which zeroes the tick counter kept in storage.
"""

import math
import struct

from wasmgate import (
    App,
    Err,
    Severity,
    Value_Integer,
    as_float,
    describe,
    exports,
    field,
    info,
    storage,
    this_device,
    warn,
)

# Storage key of the tick counter (u64, little endian).
TICKS_KEY = "ticks"
MASK64 = (1 << 64) - 1


def u64(text: str) -> int:
    value = int(text)
    if not 0 <= value <= MASK64:
        raise ValueError("out of range for u64")
    return value


def round2(x: float) -> float:
    """Two decimals, halves away from zero (as Rust's f64::round)."""
    y = abs(x * 100.0)
    r = math.floor(y)
    if y - r >= 0.5:
        r += 1
    return math.copysign(r, x) / 100.0


class Room:
    """A room whose temperature drifts toward the outside when the heating is
    off and warms up when it is on; a deterministic pseudo-random wobble on top."""

    def __init__(self, temperature: float, seed: int):
        self.temperature = temperature
        self.seed = seed
        self.step = 0

    def next(self, heating: bool):
        s = self.seed
        s ^= (s << 13) & MASK64
        s ^= s >> 7
        s ^= (s << 17) & MASK64
        self.seed = s
        noise = (s % 1000) / 1000.0 - 0.5
        self.step += 1
        self.temperature += (0.4 if heating else -0.25) + noise * 0.1
        humidity = 45.0 + 8.0 * math.sin(self.step / 10.0) + noise
        return round2(self.temperature), round2(humidity)


def load_ticks() -> int:
    try:
        data = storage.get(TICKS_KEY)
    except Err:
        return 0
    if data is not None and len(data) == 8:
        return struct.unpack("<Q", data)[0]
    return 0


class Thermostat(App):
    def __init__(self, config, previous):
        # One handle for the app's life (the host caps live handles at 1024).
        self.device = device = this_device()
        self.setpoint = as_float(device.desired("setpoint"))
        if self.setpoint is None:
            self.setpoint = 21.0
        # A hot swap hands over the room temperature; otherwise start from config.
        if previous is not None and len(previous) == 8:
            temperature = struct.unpack("<d", previous)[0]
        else:
            temperature = config.parse_or("start_temperature", 18.0)
        seed = max(config.parse_or("seed", 0x5EED, u64), 1)
        self.sensor = Room(temperature, seed)
        self.heating = False
        self.ticks = load_ticks()
        self.overheat_at = config.parse_or("overheat_at", 28.0)
        info(f"thermostat on {device.id()}: setpoint {self.setpoint:.1f} °C, {self.ticks} ticks so far")

    def save(self):
        return struct.pack("<d", self.sensor.temperature)

    def on_tick(self, now):
        device = self.device
        temperature, humidity = self.sensor.next(self.heating)
        # Hysteresis of half a degree either side of the setpoint.
        if temperature < self.setpoint - 0.5:
            self.heating = True
        elif temperature > self.setpoint + 0.5:
            self.heating = False
        self.ticks += 1
        try:
            storage.set(TICKS_KEY, struct.pack("<Q", self.ticks))
        except Err as e:
            warn(f"could not store the tick counter: {describe(e)}")
        try:
            device.record("climate", None, [field("temperature", temperature), field("humidity", humidity)])
        except Err as e:
            warn(f"record refused: {describe(e)}")
        try:
            device.report(
                [
                    field("temperature", temperature),
                    field("heating", self.heating),
                    field("setpoint", self.setpoint),
                    field("ticks", self.ticks),
                ]
            )
        except Err as e:
            warn(f"report refused: {describe(e)}")
        if temperature > self.overheat_at:
            try:
                device.alert("overheat", Severity.WARNING, [field("temperature", temperature)])
            except Err as e:
                warn(f"alert refused: {describe(e)}")
        heating = "on" if self.heating else "off"
        info(
            f"tick {self.ticks}: {temperature:.2f} °C, {humidity:.1f} % rh, "
            f"heating {heating} (setpoint {self.setpoint:.1f} °C)"
        )

    def on_desired(self, device, changes):
        for name, value in changes:
            setpoint = as_float(value)
            if name == "setpoint" and setpoint is not None:
                info(f"setpoint changed {self.setpoint:.1f} -> {setpoint:.1f} °C")
                self.setpoint = setpoint
            else:
                raise Err(f"cannot apply {name}")

    def on_action(self, device, name, argument):
        if name != "reset":
            raise Err(f"unknown action {name}")
        before = self.ticks
        self.ticks = 0
        try:
            storage.set(TICKS_KEY, struct.pack("<Q", 0))
        except Err as e:
            raise Err(describe(e))
        info(f"reset: tick counter was {before}")
        return Value_Integer(before)


WitWorld = exports(Thermostat)
