/* `mlp`: every JSAE run (toy-mlp.yaml at the paper's λ, toy-mlp-low-lambda.yaml below it) against
   toy-mlp.yaml's TopK run at the same layer: absolute SCALAR, the ratio JSAE / TopK, and both SAEs'
   fvu and the downstream SAE's CE loss increase. */
with s as (
  select r.experiment, r.id, r.config->>'$.sae.arch' as arch,
    cast(r.config->>'$.sae.jsae_lambda' as double) as lambda, s.layer, s.absolute
  from scalar_scores s join runs r on r.id = s.run_id
  where s.curve = 'model' and r.status = 'done'
    and r.experiment in ('toy-mlp', 'toy-mlp-low-lambda')),
m as (
  select run_id, sae, max(value) filter (where metric = 'fvu') as fvu,
    max(value) filter (where metric = 'ce_loss_increase') as ce
  from metrics group by all)
select x.layer, x.experiment, x.lambda, round(x.absolute) as jsae_abs, round(t.absolute) as topk_abs,
  round(x.absolute / t.absolute, 3) as ratio,
  round(mi.fvu, 4) as fvu_in, round(mo.fvu, 4) as fvu_out, round(mo.ce, 4) as ce_out,
  round(ti.fvu, 4) as topk_fvu_in, round(tt.fvu, 4) as topk_fvu_out, round(tt.ce, 4) as topk_ce_out
from s x
join s t on t.arch = 'topk' and t.experiment = 'toy-mlp' and t.layer = x.layer
join m mi on mi.run_id = x.id and mi.sae = 'blocks.' || x.layer || '.hook_mlp_in'
join m mo on mo.run_id = x.id and mo.sae = 'blocks.' || x.layer || '.hook_mlp_out'
join m ti on ti.run_id = t.id and ti.sae = 'blocks.' || x.layer || '.hook_mlp_in'
join m tt on tt.run_id = t.id and tt.sae = 'blocks.' || x.layer || '.hook_mlp_out'
where x.arch = 'jsae'
order by x.layer, x.lambda desc
