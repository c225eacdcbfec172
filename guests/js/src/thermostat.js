// The thermostat example app in JavaScript: the same behaviour as
// guests/rust/thermostat, value for value.
//
// On every tick it reads a simulated room sensor, records a `climate` point
// (temperature, humidity), switches the heating with a little hysteresis and
// reports its attributes. The cloud can change the `setpoint` attribute and
// call the `reset` action, which zeroes the tick counter kept in storage.

import { Config, field, info, warn, storage, thisDevice, number, integer, asNumber } from './wasmgate.js';

/** Storage key of the tick counter (u64, little endian). */
const TICKS_KEY = 'ticks';
const MASK64 = (1n << 64n) - 1n;

/**
 * A room whose temperature drifts toward the outside when the heating is off
 * and warms up when it is on; a deterministic pseudo-random wobble on top.
 */
class Room {
  constructor(temperature, seed) {
    this.temperature = temperature;
    this.seed = seed; // BigInt, xorshift64 state
    this.step = 0;
  }

  next(heating) {
    let s = this.seed;
    s ^= (s << 13n) & MASK64;
    s ^= s >> 7n;
    s ^= (s << 17n) & MASK64;
    this.seed = s;
    const noise = Number(s % 1000n) / 1000 - 0.5;
    this.step += 1;
    this.temperature += (heating ? 0.4 : -0.25) + noise * 0.1;
    const humidity = 45 + 8 * Math.sin(this.step / 10) + noise;
    return [round(this.temperature), round(humidity)];
  }
}

/** Two decimals, halves away from zero (as Rust's f64::round). */
function round(x) {
  return (Math.sign(x) * Math.round(Math.abs(x) * 100)) / 100;
}

function u64ToBytes(n) {
  const bytes = new Uint8Array(8);
  new DataView(bytes.buffer).setBigUint64(0, BigInt(n), true);
  return bytes;
}

function loadTicks() {
  try {
    const bytes = storage.get(TICKS_KEY);
    if (bytes && bytes.length === 8) {
      return new DataView(bytes.buffer, bytes.byteOffset, 8).getBigUint64(0, true);
    }
  } catch (e) {
    // Unreadable counter: start again from zero, as the Rust app does.
  }
  return 0n;
}

let app = null;

export function init(pairs, previous) {
  const config = new Config(pairs);
  const device = thisDevice();
  const setpoint = asNumber(device.desired('setpoint')) ?? 21.0;
  // A hot swap hands over the room temperature; otherwise start from config.
  let temperature;
  if (previous && previous.length === 8) {
    temperature = new DataView(previous.buffer, previous.byteOffset, 8).getFloat64(0, true);
  } else {
    temperature = config.number('start_temperature', 18.0);
  }
  let seed = config.u64('seed', 0x5eedn);
  if (seed < 1n) seed = 1n;
  app = {
    // One handle for the app's life: a handle per tick would pile up until
    // the garbage collector ran (the host caps live handles at 1024).
    device,
    sensor: new Room(temperature, seed),
    setpoint,
    heating: false,
    ticks: loadTicks(),
    overheatAt: config.number('overheat_at', 28.0),
  };
  info(`thermostat on ${device.id()}: setpoint ${app.setpoint.toFixed(1)} °C, ${app.ticks} ticks so far`);
}

export function save() {
  const bytes = new Uint8Array(8);
  new DataView(bytes.buffer).setFloat64(0, app.sensor.temperature, true);
  return bytes;
}

export function onTick(_now) {
  const device = app.device;
  const [temperature, humidity] = app.sensor.next(app.heating);
  // Hysteresis of half a degree either side of the setpoint.
  if (temperature < app.setpoint - 0.5) {
    app.heating = true;
  } else if (temperature > app.setpoint + 0.5) {
    app.heating = false;
  }
  app.ticks += 1n;
  try {
    storage.set(TICKS_KEY, u64ToBytes(app.ticks));
  } catch (e) {
    warn(`could not store the tick counter: ${describe(e)}`);
  }
  try {
    device.record('climate', undefined, [
      field('temperature', number(temperature)),
      field('humidity', number(humidity)),
    ]);
  } catch (e) {
    warn(`record refused: ${describe(e)}`);
  }
  try {
    device.report([
      field('temperature', number(temperature)),
      field('heating', { tag: 'boolean', val: app.heating }),
      field('setpoint', number(app.setpoint)),
      field('ticks', integer(app.ticks)),
    ]);
  } catch (e) {
    warn(`report refused: ${describe(e)}`);
  }
  if (temperature > app.overheatAt) {
    try {
      device.alert('overheat', 'warning', [field('temperature', number(temperature))]);
    } catch (e) {
      warn(`alert refused: ${describe(e)}`);
    }
  }
  info(
    `tick ${app.ticks}: ${temperature.toFixed(2)} °C, ${humidity.toFixed(1)} % rh, ` +
      `heating ${app.heating ? 'on' : 'off'} (setpoint ${app.setpoint.toFixed(1)} °C)`,
  );
}

export function onDesired(_device, changes) {
  for (const [name, value] of changes) {
    const setpoint = asNumber(value);
    if (name === 'setpoint' && setpoint !== undefined) {
      info(`setpoint changed ${app.setpoint.toFixed(1)} -> ${setpoint.toFixed(1)} °C`);
      app.setpoint = setpoint;
    } else {
      throw `cannot apply ${name}`;
    }
  }
}

export function onAction(_device, name, _argument) {
  if (name !== 'reset') {
    throw `unknown action ${name}`;
  }
  const before = app.ticks;
  app.ticks = 0n;
  try {
    storage.set(TICKS_KEY, u64ToBytes(0n));
  } catch (e) {
    throw describe(e);
  }
  info(`reset: tick counter was ${before}`);
  return integer(before);
}

/** A host error (`error` variant) as "kind: message". */
function describe(e) {
  const error = e && e.payload !== undefined ? e.payload : e;
  return error && error.tag ? `${error.tag}: ${error.val}` : String(error);
}
