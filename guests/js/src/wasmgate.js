// A thin layer over the `wasmgate:device` world for JavaScript apps. The
// bindings themselves are made by componentize-js from ../../wit at build
// time; this module only adds helpers.

import { log } from 'wasmgate:device/log@0.1.0';
export { thisDevice } from 'wasmgate:device/device@0.1.0';
export * as storage from 'wasmgate:device/storage@0.1.0';

/** Write an `info` line to the app's log. */
export function info(message) {
  log('info', message);
}

/** Write a `warn` line to the app's log. */
export function warn(message) {
  log('warn', message);
}

/** Write an `error` line to the app's log. */
export function error(message) {
  log('error', message);
}

/** A field of a report, point or alert: `field('temperature', number(21.5))`. */
export function field(name, value) {
  return [name, value];
}

/** A `number` value. */
export function number(x) {
  return { tag: 'number', val: x };
}

/** An `integer` value (s64): give a BigInt or a safe integer. */
export function integer(x) {
  return { tag: 'integer', val: BigInt(x) };
}

/** A `text` value. */
export function text(s) {
  return { tag: 'text', val: s };
}

/** A `boolean` value. */
export function boolean(b) {
  return { tag: 'boolean', val: b };
}

/** The value as a JS number for `number` and `integer` values, else undefined. */
export function asNumber(value) {
  if (!value) return undefined;
  if (value.tag === 'number') return value.val;
  if (value.tag === 'integer') return Number(value.val);
  return undefined;
}

/** The app's configuration: the key/values given in gateway.toml. */
export class Config {
  constructor(pairs) {
    this.pairs = pairs;
  }

  /** The value of `key`, or undefined. */
  get(key) {
    const pair = this.pairs.find(([k]) => k === key);
    return pair ? pair[1] : undefined;
  }

  /** `key` as a number, `fallback` if not given; throws (fails init) if it does not parse. */
  number(key, fallback) {
    const raw = this.get(key);
    if (raw === undefined) return fallback;
    const x = Number(raw);
    if (raw.trim() === '' || Number.isNaN(x)) throw `config key ${key}: cannot parse "${raw}" as a number`;
    return x;
  }

  /** `key` as an unsigned 64-bit BigInt, `fallback` if not given. */
  u64(key, fallback) {
    const raw = this.get(key);
    if (raw === undefined) return fallback;
    if (!/^[0-9]+$/.test(raw.trim())) throw `config key ${key}: cannot parse "${raw}" as an unsigned integer`;
    const x = BigInt(raw.trim());
    if (x > (1n << 64n) - 1n) throw `config key ${key}: ${raw} is too large`;
    return x;
  }
}
