"""{{name}}: a wasmgate app in Python, made by `wasmgate new` as a place to start.

A room thermostat: on every tick it heats the room while it is colder than
the setpoint (and lets it cool otherwise), records a `climate` point and
reports its attributes. The cloud may change `setpoint`; `save` hands the
room's temperature to the next instance.
"""

import struct

from wasmgate import App, Err, as_float, describe, exports, field, info, this_device, warn


class Room(App):
    def __init__(self, config, previous):
        # One handle for the app's life (the host caps live handles at 1024).
        self.device = this_device()
        setpoint = as_float(self.device.desired("setpoint"))
        self.setpoint = 21.0 if setpoint is None else setpoint
        # The instance before this one handed over the room's temperature; a
        # first start takes it from the config.
        if previous is not None and len(previous) == 8:
            self.temperature = struct.unpack("<d", previous)[0]
        else:
            self.temperature = config.parse_or("start_temperature", 18.0)
        self.heating = False
        self.ticks = 0
        info(f"started on {self.device.id()}: {self.temperature:.2f} °C, setpoint {self.setpoint:.1f} °C")

    def save(self):
        return struct.pack("<d", self.temperature)

    def on_tick(self, now):
        self.heating = self.temperature < self.setpoint
        self.temperature = round(self.temperature + (0.5 if self.heating else -0.25), 2)
        self.ticks += 1
        try:
            self.device.record("climate", None, [field("temperature", self.temperature)])
        except Err as e:
            warn(f"record refused: {describe(e)}")
        try:
            self.device.report(
                [
                    field("temperature", self.temperature),
                    field("heating", self.heating),
                    field("setpoint", self.setpoint),
                    field("ticks", self.ticks),
                ]
            )
        except Err as e:
            warn(f"report refused: {describe(e)}")
        heating = "on" if self.heating else "off"
        info(f"tick {self.ticks}: {self.temperature:.2f} °C, heating {heating} (setpoint {self.setpoint:.1f} °C)")

    def on_desired(self, device, changes):
        for name, value in changes:
            setpoint = as_float(value)
            if name != "setpoint" or setpoint is None:
                raise Err(f"cannot apply {name}")
            info(f"setpoint changed {self.setpoint:.1f} -> {setpoint:.1f} °C")
            self.setpoint = setpoint

    def on_action(self, device, name, argument):
        raise Err(f"no action {name}")


WitWorld = exports(Room)
