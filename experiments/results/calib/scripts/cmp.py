# ruff: noqa
import json, sys
for path in sys.argv[1:]:
    d = json.load(open(path + "/variance.json"))
    print("##", path.split("/")[-1])
    for r in d["rows"]:
        if r["selection"] in ("stratified-run", "fedavg-run"):
            b = r["info"].get("band"); meas = r["measured"]; se = r["measured_se"]
            inb = None if not b else (b[1] <= meas <= b[2])
            pr = r["predicted"]
            print(f"  r{r['round']} s{r.get('seed')} {r['selection']:15s} meas {meas:.4g}±{se:.2g} pred {pr if pr is None else round(pr,4)} band {None if not b else [round(x,4) for x in b]} ratio {None if pr is None else round(pr/meas,3)} in {inb} | {r['info']['mode']} {r['info'].get('design','')} {r['info']['reason'][:150]}")
