"""RSS timeline of one ``update_minibatch`` step (or the decoder arm) of ``step_memory.py``, with a
mark at every module's forward entry / exit and at every module output's gradient (backward), and
the maximum RSS between consecutive marks: which phase of the step holds the peak, and how much
each phase adds. Issue 19's head accounting (benchmarks/README.md, "Memory at paper scale").

Usage (from the repository root; a sampler thread reads /proc/self/statm every 2 ms):
  PYTHONPATH=$PWD nice -n 19 python benchmarks/step_memory_trace.py 4096 off      # arms: decoder off micro global
"""
import sys, time, threading, json, os
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch
import step_memory as sm
T = int(sys.argv[1]); arm = sys.argv[2]
torch.set_num_threads(2)
model = sm._model(151936, 2)
tb = sm._batch(2, 16, T, 151936)
opt = torch.optim.SGD(model.parameters(), lr=1e-3)
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0)
ev = []
page = os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as f: return int(f.read().split()[1]) * page
samples = []
stop = False
def samp():
    while not stop:
        samples.append((time.perf_counter(), rss())); time.sleep(0.002)
def mark(lbl):
    ev.append((time.perf_counter(), lbl, rss()))
for name, mod in [("embed", model.model.embed_tokens)] + [(f"L{i}", l) for i, l in enumerate(model.model.layers)] + [("norm", model.model.norm), ("head", model.lm_head)]:
    def pre(m, a, name=name): mark(f"fwd>{name}")
    def post(m, a, o, name=name):
        mark(f"fwd<{name}")
        t = o[0] if isinstance(o, tuple) else o
        if isinstance(t, torch.Tensor) and t.requires_grad:
            t.register_hook(lambda g, name=name: mark(f"bwd@{name}"))
    mod.register_forward_pre_hook(pre); mod.register_forward_hook(post)
sm._reset_peak()
base = rss()
th = threading.Thread(target=samp, daemon=True); th.start()
t0 = time.perf_counter()
if arm == "decoder":
    model.train()
    for s in range(0, len(tb), 1):
        p = tb.index(slice(s, s + 1))
        mark("micro")
        h = model.model(input_ids=p.input_ids, attention_mask=p.attention_mask, position_ids=p.position_ids, use_cache=False).last_hidden_state
        h[:, -T - 1:-1].float().pow(2).mean().backward()
        mark("micro_end")
else:
    from salt.train.update import update_minibatch
    import salt.train.update as U
    orig = U._Passes.backward
    def bw(self, *a, **k):
        mark("loss+bwd_start"); r = orig(self, *a, **k); mark("bwd_end"); return r
    U._Passes.backward = bw
    update_minibatch(model, opt, sched, tb, sm._settings(arm, 1), seed=0)
mark("end")
stop = True; th.join()
peak = max(s[1] for s in samples)
tp = [s[0] for s in samples if s[1] == peak][0]
print(f"T={T} arm={arm} base={base/2**30:.2f} peak-base={(peak-base)/2**30:.3f} GiB  hwm={(sm._status_kib('VmHWM')*1024-base)/2**30:.3f} secs={time.perf_counter()-t0:.1f}")
for t, l, r in ev:
    print(f"{t-t0:8.2f} {l:16s} {(r-base)/2**30:7.3f}")
print(f"peak at {tp-t0:.2f}")
# max rss between consecutive events
for (t1, l1, _), (t2, l2, _) in zip(ev, ev[1:]):
    m = max([s[1] for s in samples if t1 <= s[0] <= t2] or [0])
    print(f"  {l1:>16s} -> {l2:16s} max {(m-base)/2**30:7.3f}")
