with s as (
  select r.experiment, r.seed, r.config->>'$.sae.arch' as arch, s.layer, s.relative, s.absolute
  from scalar_scores s join runs r on r.id = s.run_id
  where s.curve = 'model' and r.status = 'done' and r.experiment in ('toy-mlp-block', 'toy-block')),
per_layer as (
  select x.experiment, x.arch, x.seed, x.layer,
    100 * (1 - x.relative / t.relative) as rel_pct, 100 * (1 - x.absolute / t.absolute) as abs_pct,
    x.relative as rx, t.relative as rt, x.absolute as a_x, t.absolute as a_t
  from s x join s t on t.experiment = x.experiment and t.seed = x.seed and t.layer = x.layer
    and t.arch = 'topk'
  where x.arch <> 'topk'),
agg as (
  select experiment, arch, seed,
    100 * (1 - sum(rx) / sum(rt)) as rel_pct, 100 * (1 - sum(a_x) / sum(a_t)) as abs_pct,
    100 * (1 - sum(rx / case when layer < 2 then 1e4 else 1e5 end) /
      sum(rt / case when layer < 2 then 1e4 else 1e5 end)) as rel_pct_printed
  from per_layer group by all having count(*) = 4)
select experiment, arch, cast(layer as varchar) as layer, count(*) as seeds,
  round(avg(rel_pct), 2) as rel_mean, round(stddev_samp(rel_pct), 2) as rel_std,
  round(avg(abs_pct), 2) as abs_mean, round(stddev_samp(abs_pct), 2) as abs_std,
  null as printed_mean, null as printed_std
from per_layer group by all
union all
select experiment, arch, 'Σ', count(*), round(avg(rel_pct), 2), round(stddev_samp(rel_pct), 2),
  round(avg(abs_pct), 2), round(stddev_samp(abs_pct), 2),
  round(avg(rel_pct_printed), 2), round(stddev_samp(rel_pct_printed), 2)
from agg group by all
order by experiment, arch, layer
