// Rolldown settings for `jco componentize --bundle`: the component's imports (`ceph:*`,
// `wasi:*`) are not modules to bundle; the componentizer binds them.
export default {
  external: [/^ceph:/, /^wasi:/],
};
