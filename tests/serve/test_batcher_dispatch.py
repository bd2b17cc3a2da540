"""The batcher's scheduling on a real ONNX Runtime model: full groups are handed over while the
instance is busy (one per instance, so a worker never idles waiting for the event loop), partial
groups wait for an idle instance; end to end, every request gets its own rows back."""

import asyncio

import numpy as np

from ln_deploy.serve.batcher import DynamicBatcher
from ln_deploy.serve.runtime import load_served_model


def _feeds(rows, value):
    return {"x": np.full((rows, 4), value, np.float32)}


def test_full_groups_wait_in_line_partial_ones_wait_for_an_idle_instance(relu_onnx):
    model = load_served_model(relu_onnx, "relu", max_batch_size=4, batch_window_s=10.0)

    async def main():
        b = DynamicBatcher(model, instances=1)
        b._loop = asyncio.get_running_loop()  # scheduling only: no worker threads take the groups
        tasks = [asyncio.ensure_future(b.infer(_feeds(4, i), 4)) for i in range(3)]
        await asyncio.sleep(0)
        # the first runs, the second waits in line for the busy instance, the third stays queued
        assert b._inflight == 2 and b._work.qsize() == 2 and b.queued == 1
        first = b._work.get()
        b._finish(first, [{"y": f["x"]} for f in (p.feeds for p in first)], 0.0, 0.0)
        assert b._inflight == 2 and b.queued == 0  # its end let the third one in line
        # a partial group does not go in line behind a busy instance
        partial = asyncio.ensure_future(b.infer(_feeds(2, 9), 2))
        await asyncio.sleep(0)
        assert b.queued == 1 and b._timer is None
        g = b._work.get()
        b._finish(g, [{"y": p.feeds["x"]} for p in g], 0.0, 0.0)
        assert b.queued == 1 and b._inflight == 1 and b._timer is None  # the third still runs
        g = b._work.get()
        b._finish(g, [{"y": p.feeds["x"]} for p in g], 0.0, 0.0)
        # the instance idle: the partial group now waits for its window, as it always did
        assert b.queued == 1 and b._inflight == 0 and b._timer is not None
        assert float((await tasks[0])["y"][0, 0]) == 0.0
        for t in (*tasks, partial):
            t.cancel()

    asyncio.run(main())


def test_every_request_gets_its_rows_back_under_concurrency(relu_onnx):
    model = load_served_model(relu_onnx, "relu", max_batch_size=8, batch_window_s=0.002)

    async def main():
        b = DynamicBatcher(model, instances=2, max_queue=1000)
        b.start()
        rows = [1 + i % 8 for i in range(200)]
        outs = await asyncio.gather(*(b.infer(_feeds(r, float(i)), r) for i, r in enumerate(rows)))
        await b.close()
        for i, (r, out) in enumerate(zip(rows, outs)):
            assert out["y"].shape == (r, 4) and np.all(out["y"] == float(i))
        assert b._inflight == 0 and b.stats.success_count == 200 and b.stats.inference_count == sum(rows)
        full = b.stats.batch_sizes.get(8, 0)
        assert full and sum(b.stats.batch_sizes.values()) < 200  # rows were batched together

    asyncio.run(main())
