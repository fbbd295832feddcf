with s as (
  select r.experiment, r.seed, r.config->>'$.sae.arch' as arch, s.layer, s.relative
  from scalar_scores s join runs r on r.id = s.run_id
  where s.curve = 'model' and r.status = 'done' and r.experiment like 'reduced-toy-%'),
per_layer as (
  select x.experiment, x.arch, x.seed, x.layer, 100 * (t.relative - x.relative) / t.relative as pct,
    x.relative as rx, t.relative as rt
  from s x join s t on t.experiment = x.experiment and t.seed = x.seed and t.layer = x.layer
    and t.arch = 'topk'
  where x.arch <> 'topk'),
agg as (
  select experiment, arch, seed, 'Σ' as layer,
    100 * (1 - sum(rx) / sum(rt)) as pct,
    100 * (1 - sum(rx / case when layer < 2 then 1e4 else 1e5 end) /
      sum(rt / case when layer < 2 then 1e4 else 1e5 end)) as pct_paper
  from per_layer group by all having count(*) = 4)
select experiment, arch, cast(layer as varchar) as layer, count(*) as seeds,
  round(avg(pct), 2) as mean_pct, round(stddev_samp(pct), 2) as std_pct, null as paper_units_mean, null as paper_units_std
from per_layer group by all
union all
select experiment, arch, layer, count(*), round(avg(pct), 2), round(stddev_samp(pct), 2),
  round(avg(pct_paper), 2), round(stddev_samp(pct_paper), 2)
from agg group by all
order by experiment, arch, layer
