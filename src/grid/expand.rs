//! From parts to runs: sub-grids combined with the base, every combination of the axes
//! (in odometer order, last axis fastest), excludes applied, dense runs added.

use super::*;

/// Axis assignments of one combination: (dotted key, value).
pub(super) type Assign = Vec<(String, Value)>;

/// Advance a mixed-radix counter, last digit fastest; false once it wraps around.
pub(super) fn odometer_step(idx: &mut [usize], sizes: &[usize]) -> bool {
    for d in (0..idx.len()).rev() {
        idx[d] += 1;
        if idx[d] < sizes[d] {
            return true;
        }
        idx[d] = 0;
    }
    false
}

impl GridSpec {
    pub(super) fn combine(
        &mut self,
        name: &str,
        loc: Loc,
        top: &Part,
        sub: &Part,
        diags: &mut Diags,
    ) -> SubGrid {
        let shared: Vec<usize> = top
            .excludes
            .iter()
            .map(|x| {
                self.excludes.push(x.clone());
                self.excludes.len() - 1
            })
            .collect();
        let mut one = self.combine_shared(name, loc, top, sub, &shared, diags);
        // The file's only sub-grid: its axes are its own.
        let top_axes = top.axes.iter().chain(&top.zips);
        one.own_keys.extend(top_axes.flat_map(|d| d.keys.clone()));
        one
    }

    /// Shared part + sub-grid part -> one sub-grid (sub-grid axes replace shared ones).
    pub(super) fn combine_shared(
        &mut self,
        name: &str,
        loc: Loc,
        top: &Part,
        sub: &Part,
        shared_excludes: &[usize],
        diags: &mut Diags,
    ) -> SubGrid {
        let mut base = top.base.clone();
        deep_merge(&mut base, sub.base.clone());
        let model_loc = if sub.base.contains_key("model") {
            sub.model_loc
        } else {
            top.model_loc
        };
        let sub_keys: Vec<&String> = sub
            .axes
            .iter()
            .chain(&sub.zips)
            .flat_map(|d| &d.keys)
            .collect();
        let mut dims: Vec<Dim> = top
            .axes
            .iter()
            .filter(|d| !sub_keys.contains(&&d.keys[0]))
            .cloned()
            .collect();
        dims.extend(sub.axes.iter().cloned());
        for z in &top.zips {
            if let Some(k) = z.keys.iter().find(|k| sub_keys.contains(k)) {
                diags.push(
                    loc,
                    k,
                    format!("sub-grid `{name}` varies a key that a shared [[zip]] also sets"),
                );
            }
        }
        dims.extend(top.zips.iter().cloned());
        dims.extend(sub.zips.iter().cloned());
        one_setter_per_key(&dims, loc, diags);
        let mut excludes = shared_excludes.to_vec();
        for x in &sub.excludes {
            self.excludes.push(x.clone());
            excludes.push(self.excludes.len() - 1);
        }
        SubGrid {
            name: name.to_string(),
            loc,
            base,
            model_loc,
            dims,
            own_keys: own_keys(sub),
            excludes,
            dense: sub.dense.or(top.dense).unwrap_or(false),
        }
    }

    /// Expand into runs: per sub-grid the cartesian product of its axes (zips advance
    /// together), excludes removed, dense runs added; then the union over sub-grids with
    /// identical runs (same hash) kept once. Order: sub-grids in file order, dense runs
    /// first, then combinations with the first axis outermost.
    pub fn expand(&self) -> Result<Vec<RunSpec>> {
        let mut diags = Diags { items: Vec::new() };
        let mut matched = vec![false; self.excludes.len()];
        let mut runs: Vec<RunSpec> = Vec::new();
        let mut by_hash: HashMap<String, usize> = HashMap::new();
        for s in &self.subgrids {
            for run in self.expand_one(s, &mut matched, &mut diags) {
                match by_hash.get(&run.hash) {
                    Some(&i) => {
                        if let Some(r) = runs.get_mut(i) {
                            if !r.subgrid.split(',').any(|x| x == s.name) {
                                r.subgrid = format!("{},{}", r.subgrid, s.name);
                            }
                        }
                    }
                    None => {
                        by_hash.insert(run.hash.clone(), runs.len());
                        runs.push(run);
                    }
                }
            }
        }
        for (x, hit) in self.excludes.iter().zip(&matched) {
            if !*hit {
                let keys: Vec<String> = x.conds.iter().map(|(k, v)| format!("{k} = {v}")).collect();
                diags.push(
                    x.loc,
                    "exclude",
                    format!(
                        "{{ {} }} matches no combination (check the values)",
                        keys.join(", ")
                    ),
                );
            }
        }
        diags.finish(&self.path)?;
        disambiguate_names(&mut runs);
        Ok(runs)
    }

    pub(super) fn expand_one(
        &self,
        s: &SubGrid,
        matched: &mut [bool],
        diags: &mut Diags,
    ) -> Vec<RunSpec> {
        let mut reported = 0usize;
        let kept = self.combinations(s, matched, diags, &mut reported);
        for problem in unread_keys(s, &kept) {
            diags.push(s.loc, &s.name, problem);
        }
        let varied = varied_keys(s, &kept);
        let mut out: Vec<RunSpec> = Vec::new();
        if s.dense {
            let mut seen: Vec<String> = Vec::new();
            for (assign, exp) in &kept {
                // A dense run has nothing to prune and nothing to recover.
                let mut dense = exp.clone();
                dense.prune = None;
                dense.recovery = RecoveryConfig::default();
                let h = dense.hash();
                if seen.contains(&h) {
                    continue;
                }
                seen.push(h);
                let name = run_name(&dense, assign, &varied);
                out.push(RunSpec::new(name, s.name.clone(), dense));
            }
        }
        for (assign, mut exp) in kept {
            if let Some(msg) = run_problem(&exp) {
                if reported < 3 {
                    let what: Vec<String> =
                        assign.iter().map(|(k, v)| format!("{k} = {v}")).collect();
                    diags.push(
                        s.loc,
                        &s.name,
                        format!("combination {{ {} }}: {msg}", what.join(", ")),
                    );
                }
                reported += 1;
                continue;
            }
            if exp.recovery.is_none() {
                // Settings of a recovery that does not run are no part of the run.
                exp.recovery = RecoveryConfig::default();
            }
            let name = run_name(&exp, &assign, &varied);
            out.push(RunSpec::new(name, s.name.clone(), exp));
        }
        out
    }

    /// The sub-grid's combinations that deserialise and survive the excludes, each with
    /// its axis assignments. Combinations that fail are reported (the first three).
    pub(super) fn combinations(
        &self,
        s: &SubGrid,
        matched: &mut [bool],
        diags: &mut Diags,
        reported: &mut usize,
    ) -> Vec<(Assign, Experiment)> {
        let sizes: Vec<usize> = s.dims.iter().map(|d| d.rows.len()).collect();
        let total = sizes.iter().try_fold(1usize, |acc, &n| acc.checked_mul(n));
        match total {
            Some(n) if n <= MAX_COMBINATIONS => {}
            _ => {
                diags.push(
                    s.loc,
                    &s.name,
                    format!("more than {MAX_COMBINATIONS} combinations; split the grid"),
                );
                return Vec::new();
            }
        }
        let mut kept: Vec<(Assign, Experiment)> = Vec::new();
        if sizes.contains(&0) {
            return kept;
        }
        let mut idx = vec![0usize; sizes.len()];
        loop {
            let mut assign: Assign = Vec::new();
            let mut json = s.base.clone();
            for (d, &i) in s.dims.iter().zip(&idx) {
                for (k, (v, _)) in d
                    .keys
                    .iter()
                    .zip(d.rows.get(i).map(Vec::as_slice).unwrap_or(&[]))
                {
                    set_path(&mut json, k, v.clone());
                    assign.push((k.clone(), v.clone()));
                }
            }
            default_latency_protocol(&mut json);
            // An ids file is part of the run's identity through its content hash.
            let resolved = Experiment::from_value(Value::Object(json)).and_then(|mut exp| {
                if let Some(p) = exp.prune.as_mut() {
                    p.calib.resolve()?;
                }
                Ok(exp)
            });
            match resolved {
                Ok(exp) => {
                    if !self.excluded(s, &exp, matched) {
                        kept.push((assign, exp));
                    }
                }
                Err(e) => {
                    if *reported < 3 {
                        let what: Vec<String> =
                            assign.iter().map(|(k, v)| format!("{k} = {v}")).collect();
                        diags.push(
                            s.loc,
                            &s.name,
                            format!("combination {{ {} }}: {e}", what.join(", ")),
                        );
                    }
                    *reported += 1;
                }
            }
            if !odometer_step(&mut idx, &sizes) {
                return kept;
            }
        }
    }

    /// Does an exclude of the sub-grid drop `exp`? Every exclude that matches is marked.
    pub(super) fn excluded(&self, s: &SubGrid, exp: &Experiment, matched: &mut [bool]) -> bool {
        let mut resolved = exp.to_value();
        if let Some(m) = resolved.as_object_mut() {
            // Left out of the hashed form when off; matched as any other key here.
            m.entry("recovery")
                .or_insert_with(|| serde_json::to_value(&exp.recovery).unwrap_or(Value::Null));
        }
        let mut drop = false;
        for &xi in &s.excludes {
            let Some(x) = self.excludes.get(xi) else {
                continue;
            };
            let hit = x
                .conds
                .iter()
                .all(|(k, v)| get_path(&resolved, k).is_some_and(|r| same_value(r, v)));
            if hit {
                if let Some(m) = matched.get_mut(xi) {
                    *m = true;
                }
                drop = true;
            }
        }
        drop
    }
}

/// The keys a sub-grid sets that none of its runs reads (a LoRA sub-grid's `recovery.lr`,
/// a ShortGPT sub-grid's `prune.merge`): each would run the same experiment under another
/// name or silently do nothing, so the grid is refused before any run.
fn unread_keys(s: &SubGrid, kept: &[(Assign, Experiment)]) -> Vec<String> {
    let read = |key: &str, e: &Experiment| match key.split_once('.') {
        Some(("prune", k)) => e.prune.as_ref().is_some_and(|p| p.uses(k)),
        Some(("recovery", k)) => e.prune.is_some() && e.recovery.reads(k),
        _ => true,
    };
    let mut out = vec![];
    for key in &s.own_keys {
        if kept.is_empty() || kept.iter().any(|(_, e)| read(key, e)) {
            continue;
        }
        let mut methods: Vec<&str> = kept
            .iter()
            .map(|(_, e)| match key.starts_with("prune.") {
                true => e.prune.as_ref().map_or("dense", |p| p.method.name()),
                false => e.recovery.method.name(),
            })
            .collect();
        methods.sort_unstable();
        methods.dedup();
        let hint = match (key.as_str(), methods.as_slice()) {
            ("recovery.lr", ["lora"]) => "; LoRA's rate is `recovery.lora_lr`",
            ("recovery.lora_lr", _) => "; the distillation rate is `recovery.lr`",
            _ => "",
        };
        out.push(format!(
            "`{key}` is set here, but no run of this sub-grid reads it (its runs' methods: \
             {}){hint}",
            methods.join(", ")
        ));
    }
    out
}

/// In a grid, `eval.latency = true` asks for the default protocol (sleb); in a stored
/// experiment `true` is the short protocol, the form runs timed before protocols had
/// names keep, so only the grid's own text is read this way.
fn default_latency_protocol(json: &mut Map<String, Value>) {
    if let Some(Value::Object(e)) = json.get_mut("eval") {
        if e.get("latency") == Some(&Value::Bool(true)) {
            let name = crate::eval::latency::Protocol::default().name();
            e.insert("latency".into(), Value::String(name.into()));
        }
    }
}

/// Names are labels built from the keys a sub-grid varies, so runs of two sub-grids that
/// differ only in their bases (say a LoRA and a hierarchical sub-grid over the same budgets)
/// get the same name. Every run of a sub-grid with such a clash is then named after its
/// sub-grid too, placed after the model (`model/<sub-grid>/...`), so that its names read
/// alike (dense runs and pruned runs count as two groups: a dense run shared in all but
/// its evaluation settings does not rename the pruned ones); a clash left after that gets
/// the hash.
pub(super) fn disambiguate_names(runs: &mut [RunSpec]) {
    let clashes = |runs: &[RunSpec]| -> Vec<bool> {
        let mut count: HashMap<&str, usize> = HashMap::new();
        for r in runs {
            *count.entry(r.name.as_str()).or_default() += 1;
        }
        runs.iter().map(|r| count[r.name.as_str()] > 1).collect()
    };
    // A run shared by several sub-grids belongs to the first.
    let group = |r: &RunSpec| {
        let sub = r.subgrid.split(',').next().unwrap_or_default().to_string();
        (sub, r.experiment.prune.is_none())
    };
    let named: Vec<(String, bool)> = runs
        .iter()
        .zip(clashes(runs))
        .filter(|(_, clash)| *clash)
        .map(|(r, _)| group(r))
        .collect();
    for r in runs.iter_mut() {
        let (sub, dense) = group(r);
        if named.contains(&(sub.clone(), dense)) {
            r.name = match r.name.split_once('/') {
                Some((model, rest)) => format!("{model}/{sub}/{rest}"),
                None => format!("{}/{sub}", r.name),
            };
        }
    }
    let left = clashes(runs);
    for (r, clash) in runs.iter_mut().zip(left) {
        if clash {
            r.name = format!("{}#{}", r.name, r.hash.get(..8).unwrap_or(&r.hash));
        }
    }
}

/// The keys a sub-grid sets itself: its base's and its axes' (not the shared part's).
fn own_keys(sub: &Part) -> Vec<String> {
    let mut keys: Vec<String> = crate::experiment::flatten(&Value::Object(sub.base.clone()))
        .into_keys()
        .collect();
    keys.extend(
        sub.axes
            .iter()
            .chain(&sub.zips)
            .flat_map(|d| d.keys.clone()),
    );
    keys
}

/// A key may be set by one dimension only (an axis and a zip, or two zips, would fight).
fn one_setter_per_key(dims: &[Dim], loc: Loc, diags: &mut Diags) {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, d) in dims.iter().enumerate() {
        for k in &d.keys {
            if let Some(j) = seen.insert(k, i) {
                if j != i {
                    let at = d
                        .rows
                        .first()
                        .and_then(|r| r.first())
                        .map_or(loc, |(_, l)| *l);
                    diags.push(at, k, "set by two axes (an axis and a zip, or two zips)");
                }
            }
        }
    }
}
