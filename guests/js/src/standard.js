// A test app in JavaScript that uses WASI's standard interfaces, bound by
// componentize-js from their upstream WIT (wit/deps) through the
// `standard-app` world: the same checks as the Rust test guest
// guests/rust/test-guests/standard-interfaces.
//
// At init it reads its config through wasi:config/store (Spin's version)
// and logs through wasi:logging whether it agrees with what init was given;
// it keeps a greeting and a visit counter in its storage through
// wasi:keyvalue (Spin's version).

import { log } from 'wasi:logging/logging@0.1.0-draft';
import { get, getAll } from 'wasi:config/store@0.2.0-draft-2024-09-27';
import { open } from 'wasi:keyvalue/store@0.2.0-draft2';
import { increment } from 'wasi:keyvalue/atomics@0.2.0-draft2';

export function init(pairs, _previous) {
  const given = new Map(pairs);
  const all = getAll();
  const same = all.length === given.size && all.every(([k, v]) => given.get(k) === v);
  const unit = get('unit') ?? '-';
  const absent = get('no-such-key') === undefined;
  log('info', 'standard', `config unit=${unit} keys=${all.length} same-as-init=${same} absent=${absent}`);
  log('critical', 'standard', 'a critical line');
  const bucket = open('default');
  bucket.set('greeting', new TextEncoder().encode('hello'));
  const visits = increment(bucket, 'visits', 1n);
  const greeting = new TextDecoder().decode(bucket.get('greeting'));
  const keys = bucket.listKeys(undefined).keys.join(',');
  log('info', 'standard', `keyvalue greeting=${greeting} visits=${visits} keys=${keys}`);
}

export function save() {
  return undefined;
}

export function onTick(_now) {}

export function onDesired(_device, _changes) {}

export function onAction(_device, name, _argument) {
  throw `this app has no action ${name}`;
}
