// The JavaScript SDK of rbd-wasm: the `ceph:rbd` imports with Python-like defaults, errors
// as `RbdError` (with the WIT error's `kind`), and `job(fn)` for the export.
import * as rbd from 'ceph:rbd/rbd@0.1.0';
import * as secrets from 'ceph:rbd/secrets@0.1.0';

export class RbdError extends Error {
  constructor(kind, detail) {
    super(`${kind}: ${detail}`);
    this.kind = kind;
  }
}

function lift(e) {
  const p = e && e.payload;
  if (p && typeof p.tag === 'string') {
    const v = p.val;
    const detail = typeof v === 'string' ? v : v && typeof v === 'object' ? JSON.stringify(v, (k, x) => (typeof x === 'bigint' ? Number(x) : x)) : String(v);
    return new RbdError(p.tag, detail);
  }
  return e;
}

function guard(f) {
  try {
    return f();
  } catch (e) {
    throw lift(e);
  }
}

// The secrets the operator handed this job (a manifest's `[secrets]`): `secret(name)` is
// the value's bytes (a Uint8Array); a name not handed throws RbdError `not-found`.
export function secretNames() {
  return secrets.names();
}

export function secret(name) {
  return guard(() => secrets.get(name));
}

export function openPool(name) {
  return new Pool(guard(() => rbd.openPool(name)));
}

export class Pool {
  constructor(inner) { this.inner = inner; }
  name() { return this.inner.name(); }
  create(name, size, { order, oldFormat = false, features = 0n, stripeUnit = 0n, stripeCount = 0n } = {}) {
    guard(() => this.inner.create(name, BigInt(size), { order, oldFormat, features: BigInt(features), stripeUnit: BigInt(stripeUnit), stripeCount: BigInt(stripeCount) }));
  }
  list() { return guard(() => this.inner.list()); }
  remove(name) { guard(() => this.inner.remove(name)); }
  open(name, { snapshot, readOnly = false } = {}) {
    return new Image(guard(() => this.inner.open(name, { snapshot, readOnly })));
  }
}

export class Image {
  constructor(inner) { this.inner = inner; }
  size() { return guard(() => this.inner.size()); }
  read(offset, length) { return guard(() => this.inner.read(BigInt(offset), BigInt(length))); }
  write(offset, data) {
    const bytes = typeof data === 'string' ? new TextEncoder().encode(data) : data;
    return guard(() => this.inner.write(BigInt(offset), bytes));
  }
  createSnap(name) { guard(() => this.inner.createSnap(name)); }
  listSnaps() { return guard(() => this.inner.listSnaps()); }
  close() { this.inner[Symbol.dispose]?.(); }
}

export function job(run) {
  return {
    run(args) {
      try {
        run(args);
      } catch (e) {
        const err = lift(e);
        throw err instanceof Error ? err.message : String(err);
      }
    },
  };
}
