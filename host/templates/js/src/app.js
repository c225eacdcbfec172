// {{name}}: a wasmgate app in JavaScript, made by `wasmgate new` as a place
// to start.
//
// A room thermostat: on every tick it heats the room while it is colder than
// the setpoint (and lets it cool otherwise), records a `climate` point and
// reports its attributes. The cloud may change `setpoint`; `save` hands the
// room's temperature to the next instance.

import { Config, asNumber, boolean, field, info, integer, number, thisDevice, warn } from './wasmgate.js';

let app = null;

/** Two decimals, halves away from zero. */
function round2(x) {
  return (Math.sign(x) * Math.round(Math.abs(x) * 100)) / 100;
}

/** A host error (`error` variant) as "kind: message". */
function describe(e) {
  const error = e && e.payload !== undefined ? e.payload : e;
  return error && error.tag ? `${error.tag}: ${error.val}` : String(error);
}

export function init(pairs, previous) {
  const config = new Config(pairs);
  // One handle for the app's life: a handle per tick would pile up until the
  // garbage collector ran (the host caps live handles at 1024).
  const device = thisDevice();
  const setpoint = asNumber(device.desired('setpoint')) ?? 21.0;
  // The instance before this one handed over the room's temperature; a
  // first start takes it from the config.
  const temperature =
    previous && previous.length === 8
      ? new DataView(previous.buffer, previous.byteOffset, 8).getFloat64(0, true)
      : config.number('start_temperature', 18.0);
  app = { device, temperature, setpoint, heating: false, ticks: 0 };
  info(`started on ${device.id()}: ${temperature.toFixed(2)} °C, setpoint ${setpoint.toFixed(1)} °C`);
}

export function save() {
  const bytes = new Uint8Array(8);
  new DataView(bytes.buffer).setFloat64(0, app.temperature, true);
  return bytes;
}

export function onTick(_now) {
  app.heating = app.temperature < app.setpoint;
  app.temperature = round2(app.temperature + (app.heating ? 0.5 : -0.25));
  app.ticks += 1;
  try {
    app.device.record('climate', undefined, [field('temperature', number(app.temperature))]);
  } catch (e) {
    warn(`record refused: ${describe(e)}`);
  }
  try {
    app.device.report([
      field('temperature', number(app.temperature)),
      field('heating', boolean(app.heating)),
      field('setpoint', number(app.setpoint)),
      field('ticks', integer(app.ticks)),
    ]);
  } catch (e) {
    warn(`report refused: ${describe(e)}`);
  }
  info(
    `tick ${app.ticks}: ${app.temperature.toFixed(2)} °C, heating ${app.heating ? 'on' : 'off'} ` +
      `(setpoint ${app.setpoint.toFixed(1)} °C)`,
  );
}

export function onDesired(_device, changes) {
  for (const [name, value] of changes) {
    const setpoint = asNumber(value);
    if (name !== 'setpoint' || setpoint === undefined) {
      throw `cannot apply ${name}`;
    }
    info(`setpoint changed ${app.setpoint.toFixed(1)} -> ${setpoint.toFixed(1)} °C`);
    app.setpoint = setpoint;
  }
}

export function onAction(_device, name, _argument) {
  throw `no action ${name}`;
}
