# The reference text's first example, "Creating and writing to an image", as a job: the
# text's own lines, in its order, changed only by the import line. It runs as a script
# (no `run` function): `rbd-wasm build-py create_and_write.py`, then
# `rbd-wasm run --pool mypool create_and_write.wasm`.
import rados, rbd

cluster = rados.Rados(conffile='my_ceph.conf')
cluster.connect()
ioctx = cluster.open_ioctx('mypool')

rbd_inst = rbd.RBD()
size = 4 * 1024**3 # 4 GiB
rbd_inst.create(ioctx, 'myimage', size)

image = rbd.Image(ioctx, 'myimage')
data = 'foo' * 200
image.write(data, 0)

image.close()
ioctx.close()
cluster.shutdown()
