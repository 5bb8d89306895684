//! Saving and loading an `ExactGp` (`lazy_kernels::gp::persist`).
//!
//! The reference of a round trip is the original model: after a save and a load into a model
//! rebuilt with other initial values, `predict`'s means and variances, the learned values and
//! the NLL must be equal with `==` (bit for bit), in `f32` and `f64`; each such test first
//! checks that the rebuilt model differs before loading, so that it can fail. The file's
//! layout is checked by reading it with the `safetensors` crate directly, not with the loader.
//! Bad files are made by editing a good file's tensors and metadata with the `safetensors`
//! crate, by truncation, and from bytes that are not safetensors; each must give an error
//! that names the problem, and leave the model unchanged.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Result, Tensor};
use lazy_kernels::gp::{
    ExactGp, FitOptions, GpSettings, NllMethod, Positive, SavedGp, Transform, Variances,
};
use lazy_kernels::solve::LogdetEstimator;
use lazy_kernels::{Kernel, Preconditioner, Rank};
use safetensors::SafeTensors;

/// The initial values of [`build`]'s hyperparameters.
#[derive(Clone, Copy)]
struct Init {
    ls: [f64; 2],
    scale: f64,
    lap: f64,
    noise: f64,
}

const A: Init = Init {
    ls: [0.3, 0.5],
    scale: 2.0,
    lap: 0.7,
    noise: 0.05,
};
const B: Init = Init {
    ls: [1.1, 0.9],
    scale: 0.4,
    lap: 2.0,
    noise: 0.3,
};

/// The model's structure: a per-dimension Gaussian kernel scaled by an `exp`-transformed
/// output scale, plus a Laplacian kernel, on 2D inputs.
fn build(x: &Tensor, y: &Tensor, init: Init) -> Result<ExactGp> {
    let (dt, dev) = (x.dtype(), x.device());
    let ls = Positive::new("lengthscale", &init.ls, dt, dev)?;
    let scale = Positive::with_transform("outputscale", &[init.scale], Transform::Exp, dt, dev)?;
    let lap = Positive::new("laplace_ls", &[init.lap], dt, dev)?;
    let noise = Positive::new("noise", &[init.noise], dt, dev)?;
    let (l, s, p) = (ls.clone(), scale.clone(), lap.clone());
    ExactGp::new(x, y, vec![ls, scale, lap], noise, move || {
        Ok(Kernel::gaussian(&l.value()?).scale(&s.value()?) + Kernel::laplacian(&p.value()?))
    })
}

/// Data: `y = sin(3 x0) + x1^2 + noise` at 60 points of `[0, 1]^2`, in `dtype`.
fn data(dtype: DType) -> Result<(Tensor, Tensor)> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut u = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let n = 60;
    let x: Vec<f64> = (0..2 * n).map(|_| u()).collect();
    let y: Vec<f64> = (0..n)
        .map(|i| (3.0 * x[2 * i]).sin() + x[2 * i + 1].powi(2) + 0.05 * (u() - 0.5))
        .collect();
    let dev = Device::Cpu;
    Ok((
        Tensor::from_vec(x, (n, 2), &dev)?.to_dtype(dtype)?,
        Tensor::from_vec(y, n, &dev)?.to_dtype(dtype)?,
    ))
}

/// Non-default settings, with tolerances that are not short decimals.
fn settings() -> GpSettings {
    GpSettings {
        nll_method: NllMethod::Stochastic,
        train_tol: 0.1 + 0.2,
        predict_tol: 1e-7 / 3.0,
        probes: 9,
        lanczos_iters: 41,
        preconditioner: Preconditioner::PivotedCholesky(Rank::Fixed(23)),
        max_iters: 777,
        seed: u64::MAX - 5,
        noise_floor: 2.5e-7,
        predict_chunk: 7,
        learn_mean: false,
        variances: Variances::Love {
            tol: 1e-7 / 3.0,
            max_rank: 333,
        },
        logdet_estimator: LogdetEstimator::Hutchinson,
        quadrature_tol: 2.0 / 3.0,
    }
}

/// [`data`] on `dev`.
fn data_on(dev: &Device, dtype: DType) -> Result<(Tensor, Tensor)> {
    let (x, y) = data(dtype)?;
    Ok((x.to_device(dev)?, y.to_device(dev)?))
}

/// A model of [`data`] on `dev` after a few fitting steps.
fn fitted_on(dev: &Device, dtype: DType) -> Result<ExactGp> {
    let (x, y) = data_on(dev, dtype)?;
    let mut gp = build(&x, &y, A)?.with_settings(GpSettings {
        learn_mean: true,
        ..settings()
    });
    gp.fit(&FitOptions {
        steps: 3,
        lr: 0.1,
        progress: false,
        ..FitOptions::default()
    })?;
    gp.settings.learn_mean = false;
    Ok(gp)
}

fn x_new(dtype: DType) -> Result<Tensor> {
    let v: Vec<f64> = (0..40).map(|i| (i as f64 * 0.37).fract()).collect();
    Tensor::from_vec(v, (20, 2), &Device::Cpu)?.to_dtype(dtype)
}

/// Means and variances as `f64` (exact for `f32`).
fn prediction(gp: &ExactGp, dtype: DType) -> Result<(Vec<f64>, Vec<f64>)> {
    let p = gp.predict(&x_new(dtype)?.to_device(gp.data().0.device())?)?;
    Ok((
        p.mean.to_dtype(DType::F64)?.to_vec1()?,
        p.variance.to_dtype(DType::F64)?.to_vec1()?,
    ))
}

fn raw_bits(gp: &ExactGp) -> Result<Vec<Vec<f64>>> {
    let mut v: Vec<Vec<f64>> = gp
        .hypers()
        .iter()
        .map(|h| h.var().as_tensor().to_dtype(DType::F64)?.to_vec1())
        .collect::<Result<_>>()?;
    v.push(gp.noise().var().to_dtype(DType::F64)?.to_vec1()?);
    v.push(gp.mean().to_dtype(DType::F64)?.to_vec1()?);
    Ok(v)
}

fn temp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "lazy_kernels_persist_{}_{name}.safetensors",
        std::process::id()
    ))
}

/// The message of an expected error.
fn err_text<T>(r: Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

fn assert_mentions(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "the error {msg:?} should mention {p:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------------------------

fn round_trip_with_data(dev: &Device, dtype: DType) -> Result<()> {
    let gp = fitted_on(dev, dtype)?;
    let want = prediction(&gp, dtype)?;
    // `predict` is deterministic: the round trip is compared against it with `==`.
    assert_eq!(prediction(&gp, dtype)?, want);
    let path = temp(&format!("with_data_{dtype:?}"));
    gp.save(&path, true)?;

    // The same structure with other values, and data it will not use.
    let (xb, yb) = data_on(dev, dtype)?;
    let other = build(&xb, &(yb * 0.5)?, B)?;
    assert_ne!(
        prediction(&other, dtype)?,
        want,
        "the test must be able to fail"
    );
    let hypers = other.hypers().to_vec();
    let noise = other.noise().clone();
    let (l, s, p) = (hypers[0].clone(), hypers[1].clone(), hypers[2].clone());
    let loaded = ExactGp::load(&path, hypers, noise, move || {
        Ok(Kernel::gaussian(&l.value()?).scale(&s.value()?) + Kernel::laplacian(&p.value()?))
    })?;
    std::fs::remove_file(&path).ok();

    assert_eq!(loaded.settings, gp.settings);
    assert_eq!(raw_bits(&loaded)?, raw_bits(&gp)?);
    assert_eq!(loaded.values()?, gp.values()?);
    let (x0, y0) = gp.data();
    let (x1, y1) = loaded.data();
    assert_eq!(x1.dtype(), dtype);
    assert_eq!(
        x1.to_dtype(DType::F64)?.to_vec2::<f64>()?,
        x0.to_dtype(DType::F64)?.to_vec2::<f64>()?
    );
    assert_eq!(
        y1.to_dtype(DType::F64)?.to_vec1::<f64>()?,
        y0.to_dtype(DType::F64)?.to_vec1::<f64>()?
    );
    let got = prediction(&loaded, dtype)?;
    assert_eq!(got.0, want.0, "means after the round trip");
    assert_eq!(got.1, want.1, "variances after the round trip");
    assert_eq!(loaded.nll()?.1, gp.nll()?.1);
    Ok(())
}

#[test]
fn round_trip_with_data_predicts_bit_for_bit_f64() -> Result<()> {
    round_trip_with_data(&Device::Cpu, DType::F64)
}

#[test]
fn round_trip_with_data_predicts_bit_for_bit_f32() -> Result<()> {
    round_trip_with_data(&Device::Cpu, DType::F32)
}

fn round_trip_state(dev: &Device, dtype: DType) -> Result<()> {
    let gp = fitted_on(dev, dtype)?;
    let want = prediction(&gp, dtype)?;
    let bytes = gp.to_safetensors(false)?;
    let (x, y) = data_on(dev, dtype)?;
    let mut again = build(&x, &y, B)?;
    assert_ne!(
        prediction(&again, dtype)?,
        want,
        "the test must be able to fail"
    );
    assert_ne!(again.settings, gp.settings);
    SavedGp::from_bytes(&bytes, dev)?.apply(&mut again)?;
    assert_eq!(again.settings, gp.settings);
    assert_eq!(raw_bits(&again)?, raw_bits(&gp)?);
    assert_eq!(prediction(&again, dtype)?, want);
    Ok(())
}

#[test]
fn state_only_into_a_rebuilt_model_predicts_bit_for_bit_f64() -> Result<()> {
    round_trip_state(&Device::Cpu, DType::F64)
}

#[test]
fn state_only_into_a_rebuilt_model_predicts_bit_for_bit_f32() -> Result<()> {
    round_trip_state(&Device::Cpu, DType::F32)
}

/// The round trips on the GPU (a build with `--features cuda` on a machine with one): the
/// same device before and after, so bit for bit too.
#[cfg(feature = "cuda")]
#[test]
fn round_trips_on_cuda_predict_bit_for_bit() -> Result<()> {
    let dev = Device::new_cuda(0)?;
    for dtype in [DType::F32, DType::F64] {
        round_trip_with_data(&dev, dtype)?;
        round_trip_state(&dev, dtype)?;
    }
    Ok(())
}

#[test]
fn load_state_from_a_file_and_hyperparameters_from_the_file() -> Result<()> {
    let gp = fitted_on(&Device::Cpu, DType::F64)?;
    let want = prediction(&gp, DType::F64)?;
    let path = temp("state");
    gp.save(&path, false)?;
    let (x, y) = data(DType::F64)?;
    let mut again = build(&x, &y, B)?;
    again.load_state(&path)?;
    assert_eq!(prediction(&again, DType::F64)?, want);

    // Without data the file cannot make a model by itself.
    let saved = SavedGp::read(&path, &Device::Cpu)?;
    std::fs::remove_file(&path).ok();
    assert!(saved.data().is_none());
    let l = saved.positive("lengthscale")?;
    let lc = l.clone();
    let msg = err_text(saved.into_gp(vec![l], None, move || Ok(Kernel::gaussian(&lc.value()?))));
    assert_mentions(&msg, &["no training data", "load_state"]);

    // With data, the hyperparameters can come from the file itself.
    let saved = SavedGp::from_bytes(&gp.to_safetensors(true)?, &Device::Cpu)?;
    assert_eq!(
        saved.hyper_names(),
        vec!["lengthscale", "outputscale", "laplace_ls"]
    );
    assert_eq!(saved.dtype(), DType::F64);
    assert_eq!(saved.settings(), &gp.settings);
    let (l, s, p) = (
        saved.positive("lengthscale")?,
        saved.positive("outputscale")?,
        saved.positive("laplace_ls")?,
    );
    assert_eq!(s.transform(), Transform::Exp);
    assert_eq!(l.values()?, gp.hypers()[0].values()?);
    let (lc, sc, pc) = (l.clone(), s.clone(), p.clone());
    let again = saved.into_gp(vec![l, s, p], None, move || {
        Ok(Kernel::gaussian(&lc.value()?).scale(&sc.value()?) + Kernel::laplacian(&pc.value()?))
    })?;
    assert_eq!(again.noise().name(), "noise");
    assert_eq!(prediction(&again, DType::F64)?, want);
    Ok(())
}

#[test]
fn settings_round_trip_every_preconditioner_and_variance_method() -> Result<()> {
    let (x, y) = data(DType::F64)?;
    for (preconditioner, variances) in [
        (Preconditioner::None, Variances::Exact),
        (
            Preconditioner::PivotedCholesky(Rank::Fixed(0)),
            Variances::default(),
        ),
        (
            Preconditioner::PivotedCholesky(Rank::Auto { max: 12_345 }),
            Variances::Exact,
        ),
    ] {
        let s = GpSettings {
            preconditioner,
            variances,
            train_tol: f64::MIN_POSITIVE,
            predict_tol: 1.0 / 3.0,
            ..settings()
        };
        let gp = build(&x, &y, A)?.with_settings(s.clone());
        let saved = SavedGp::from_bytes(&gp.to_safetensors(false)?, &Device::Cpu)?;
        assert_eq!(saved.settings(), &s);
    }
    Ok(())
}

/// The file read with the `safetensors` crate, not the loader: the layout of the module doc.
#[test]
fn the_file_layout_is_as_documented() -> Result<()> {
    let gp = fitted_on(&Device::Cpu, DType::F32)?;
    let bytes = gp.to_safetensors(true)?;
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut names = st.names();
    names.sort();
    assert_eq!(
        names,
        vec![
            "data.x",
            "data.y",
            "hypers.laplace_ls",
            "hypers.lengthscale",
            "hypers.outputscale",
            "mean",
            "noise"
        ]
    );
    let ls = st.tensor("hypers.lengthscale").unwrap();
    assert_eq!(ls.dtype(), safetensors::Dtype::F32);
    assert_eq!(ls.shape(), &[2]);
    let want: Vec<u8> = gp.hypers()[0]
        .var()
        .to_vec1::<f32>()?
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    assert_eq!(ls.data(), &want[..]);
    assert_eq!(st.tensor("data.x").unwrap().shape(), &[60, 2]);
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let meta = header.metadata().clone().unwrap();
    let get = |k: &str| meta.get(k).map(String::as_str);
    assert_eq!(get("format"), Some("lazy-kernels/ExactGp"));
    assert_eq!(get("version"), Some("1"));
    assert_eq!(get("hypers.count"), Some("3"));
    assert_eq!(get("hypers.1"), Some("outputscale"));
    assert_eq!(get("hypers.outputscale.transform"), Some("exp"));
    assert_eq!(get("hypers.lengthscale.transform"), Some("softplus"));
    assert_eq!(get("noise.name"), Some("noise"));
    assert_eq!(get("data"), Some("true"));
    assert_eq!(get("settings.preconditioner"), Some("fixed:23"));
    assert_eq!(get("settings.probes"), Some("9"));
    assert_eq!(
        get("settings.train_tol").unwrap().parse::<f64>().unwrap(),
        0.1 + 0.2
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Bad files
// ---------------------------------------------------------------------------------------------

/// A good file's tensors and metadata, to edit.
fn parts(bytes: &[u8]) -> Result<(HashMap<String, Tensor>, HashMap<String, String>)> {
    let tensors = candle_core::safetensors::load_buffer(bytes, &Device::Cpu)?;
    let (_, header) = SafeTensors::read_metadata(bytes).unwrap();
    Ok((tensors, header.metadata().clone().unwrap()))
}

fn assemble(tensors: HashMap<String, Tensor>, meta: HashMap<String, String>) -> Vec<u8> {
    safetensors::serialize(tensors, Some(meta)).unwrap()
}

/// A model of the structure of [`build`] in `dtype`, its values and its file (with data).
fn target(dtype: DType) -> Result<(ExactGp, Vec<u8>)> {
    let (x, y) = data(dtype)?;
    let gp = build(&x, &y, A)?.with_settings(settings());
    let bytes = gp.to_safetensors(true)?;
    Ok((gp, bytes))
}

/// Loads `bytes` into a fresh model of the structure of [`build`] (values `B`), checks that
/// it fails and leaves the model unchanged, and returns the message.
fn load_fails(bytes: &[u8], dtype: DType) -> Result<String> {
    let (x, y) = data(dtype)?;
    let mut gp = build(&x, &y, B)?;
    let before = (raw_bits(&gp)?, gp.settings.clone());
    let r = SavedGp::from_bytes(bytes, &Device::Cpu).and_then(|s| s.apply(&mut gp));
    let msg = err_text(r);
    assert_eq!((raw_bits(&gp)?, gp.settings.clone()), before, "{msg}");
    Ok(msg)
}

#[test]
fn a_missing_tensor_is_named() -> Result<()> {
    let (_, bytes) = target(DType::F64)?;
    for key in ["mean", "noise", "hypers.outputscale", "data.y"] {
        let (mut t, meta) = parts(&bytes)?;
        t.remove(key);
        let msg = load_fails(&assemble(t, meta), DType::F64)?;
        assert_mentions(&msg, &["no tensor", &format!("'{key}'")]);
    }
    // A model with a hyperparameter the file lacks.
    let (x, y) = data(DType::F64)?;
    let l = Positive::new("lengthscale", &[1.0, 1.0], DType::F64, &Device::Cpu)?;
    let period = Positive::new("period", &[1.0], DType::F64, &Device::Cpu)?;
    let noise = Positive::new("noise", &[0.1], DType::F64, &Device::Cpu)?;
    let (lc, pc) = (l.clone(), period.clone());
    let mut gp = ExactGp::new(&x, &y, vec![l, period], noise, move || {
        Ok(Kernel::gaussian(&lc.value()?).scale(&pc.value()?))
    })?;
    let before = raw_bits(&gp)?;
    let msg = err_text(SavedGp::from_bytes(&bytes, &Device::Cpu)?.apply(&mut gp));
    assert_mentions(&msg, &["no tensor 'hypers.period'", "period"]);
    assert_eq!(raw_bits(&gp)?, before);
    // A model that lacks one of the file's hyperparameters.
    let l = Positive::new("lengthscale", &[1.0, 1.0], DType::F64, &Device::Cpu)?;
    let noise = Positive::new("noise", &[0.1], DType::F64, &Device::Cpu)?;
    let lc = l.clone();
    let mut gp = ExactGp::new(&x, &y, vec![l], noise, move || {
        Ok(Kernel::gaussian(&lc.value()?))
    })?;
    let msg = err_text(SavedGp::from_bytes(&bytes, &Device::Cpu)?.apply(&mut gp));
    assert_mentions(&msg, &["'outputscale'", "not in the model"]);
    Ok(())
}

#[test]
fn a_wrong_shape_is_named() -> Result<()> {
    let (_, bytes) = target(DType::F64)?;
    // The file's lengthscale has 2 values, the model's 1.
    let (x, y) = data(DType::F64)?;
    let dev = Device::Cpu;
    let l = Positive::new("lengthscale", &[1.0], DType::F64, &dev)?;
    let s = Positive::with_transform("outputscale", &[1.0], Transform::Exp, DType::F64, &dev)?;
    let p = Positive::new("laplace_ls", &[1.0], DType::F64, &dev)?;
    let noise = Positive::new("noise", &[0.1], DType::F64, &dev)?;
    let (lc, sc, pc) = (l.clone(), s.clone(), p.clone());
    let mut gp = ExactGp::new(&x, &y, vec![l, s, p], noise, move || {
        Ok(Kernel::gaussian(&lc.value()?).scale(&sc.value()?) + Kernel::laplacian(&pc.value()?))
    })?;
    let before = raw_bits(&gp)?;
    let msg = err_text(SavedGp::from_bytes(&bytes, &dev)?.apply(&mut gp));
    assert_mentions(&msg, &["shape", "'lengthscale'", "[2]", "[1]"]);
    assert_eq!(raw_bits(&gp)?, before);

    // Edited tensors of the wrong shape.
    let (t, meta) = parts(&bytes)?;
    let edits: [(&str, Tensor, &[&str]); 4] = [
        (
            "mean",
            Tensor::zeros(2, DType::F64, &dev)?,
            &["'mean'", "[2]"],
        ),
        (
            "noise",
            Tensor::zeros((1, 1), DType::F64, &dev)?,
            &["'noise'", "[1, 1]"],
        ),
        (
            "data.y",
            Tensor::zeros(59, DType::F64, &dev)?,
            &["'data.y'", "[59]"],
        ),
        (
            "hypers.outputscale",
            Tensor::zeros(3, DType::F64, &dev)?,
            &["'outputscale'", "[3]", "[1]"],
        ),
    ];
    for (key, value, words) in edits {
        let mut t = t.clone();
        t.insert(key.to_string(), value);
        let msg = load_fails(&assemble(t, meta.clone()), DType::F64)?;
        assert_mentions(&msg, &["shape"]);
        assert_mentions(&msg, words);
    }
    Ok(())
}

#[test]
fn a_wrong_dtype_is_named() -> Result<()> {
    // An f32 file into an f64 model.
    let (_, bytes32) = target(DType::F32)?;
    let msg = load_fails(&bytes32, DType::F64)?;
    assert_mentions(&msg, &["dtype", "F32", "F64"]);
    // And the other way round.
    let (_, bytes64) = target(DType::F64)?;
    let msg = load_fails(&bytes64, DType::F32)?;
    assert_mentions(&msg, &["dtype", "F32", "F64"]);
    // Edited tensors: the noise, the data, not of the mean's dtype; an integer mean.
    let (t, meta) = parts(&bytes64)?;
    for (key, dtype) in [
        ("noise", DType::F32),
        ("data.x", DType::F32),
        ("mean", DType::I64),
    ] {
        let mut t = t.clone();
        let v = t[key].to_dtype(dtype)?;
        t.insert(key.to_string(), v);
        let msg = load_fails(&assemble(t, meta.clone()), DType::F64)?;
        assert_mentions(&msg, &["dtype", &format!("'{key}'"), &format!("{dtype:?}")]);
    }
    Ok(())
}

#[test]
fn a_truncated_file_is_reported() -> Result<()> {
    let (_, bytes) = target(DType::F64)?;
    let n = bytes.len();
    for len in [n - 1, n - 8, n / 2, 20, 7, 0] {
        let msg = load_fails(&bytes[..len], DType::F64)?;
        assert_mentions(&msg, &["not a complete safetensors file", "truncated"]);
    }
    // The same through a file on disk, with its path in the error of a missing file.
    let path = temp("truncated");
    std::fs::write(&path, &bytes[..n - 3]).unwrap();
    let (x, y) = data(DType::F64)?;
    let mut gp = build(&x, &y, B)?;
    assert_mentions(&err_text(gp.load_state(&path)), &["truncated"]);
    std::fs::remove_file(&path).ok();
    assert_mentions(
        &err_text(gp.load_state(&path)),
        &["cannot read", &path.display().to_string()],
    );
    Ok(())
}

#[test]
fn a_file_that_is_not_a_saved_model_is_reported() -> Result<()> {
    for bytes in [
        &b"this is a text file, not a model"[..],
        &b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01"[..],
        &[0xffu8; 64][..],
        // A header length of 2 with a header that is not JSON.
        &b"\x02\0\0\0\0\0\0\0{["[..],
    ] {
        let msg = load_fails(bytes, DType::F64)?;
        assert_mentions(&msg, &["not a complete safetensors file"]);
    }
    // A valid safetensors file written by someone else.
    let dev = Device::Cpu;
    let other = HashMap::from([("weight".to_string(), Tensor::zeros(3, DType::F32, &dev)?)]);
    let msg = load_fails(&safetensors::serialize(other, None).unwrap(), DType::F64)?;
    assert_mentions(&msg, &["not one written by ExactGp::save", "format"]);
    Ok(())
}

#[test]
fn bad_metadata_is_named() -> Result<()> {
    let (_, bytes) = target(DType::F64)?;
    let edits: [(&str, Option<&str>, &[&str]); 6] = [
        ("version", Some("99"), &["version 99"]),
        (
            "settings.probes",
            Some("many"),
            &["'settings.probes'", "'many'"],
        ),
        (
            "settings.preconditioner",
            Some("auto"),
            &["'auto'", "auto:<max>"],
        ),
        (
            "hypers.outputscale.transform",
            Some("log"),
            &["'hypers.outputscale.transform'", "'log'"],
        ),
        ("settings.seed", None, &["no key 'settings.seed'"]),
        ("hypers.2", None, &["no key 'hypers.2'"]),
    ];
    for (key, value, words) in edits {
        let (t, mut meta) = parts(&bytes)?;
        match value {
            Some(v) => meta.insert(key.to_string(), v.to_string()),
            None => meta.remove(key),
        };
        let msg = load_fails(&assemble(t, meta), DType::F64)?;
        assert_mentions(&msg, words);
    }
    Ok(())
}

#[test]
fn a_different_transform_is_named() -> Result<()> {
    let (_, bytes) = target(DType::F64)?;
    let (x, y) = data(DType::F64)?;
    let dev = Device::Cpu;
    // The model's output scale is softplus, the file's exp.
    let l = Positive::new("lengthscale", &[1.0, 1.0], DType::F64, &dev)?;
    let s = Positive::new("outputscale", &[1.0], DType::F64, &dev)?;
    let p = Positive::new("laplace_ls", &[1.0], DType::F64, &dev)?;
    let noise = Positive::new("noise", &[0.1], DType::F64, &dev)?;
    let (lc, sc, pc) = (l.clone(), s.clone(), p.clone());
    let mut gp = ExactGp::new(&x, &y, vec![l, s, p], noise, move || {
        Ok(Kernel::gaussian(&lc.value()?).scale(&sc.value()?) + Kernel::laplacian(&pc.value()?))
    })?;
    let before = raw_bits(&gp)?;
    let msg = err_text(SavedGp::from_bytes(&bytes, &dev)?.apply(&mut gp));
    assert_mentions(
        &msg,
        &["'outputscale'", "exp in the file", "softplus in the model"],
    );
    assert_eq!(raw_bits(&gp)?, before);
    Ok(())
}

#[test]
fn two_hyperparameters_of_one_name_cannot_be_saved() -> Result<()> {
    let (x, y) = data(DType::F64)?;
    let dev = Device::Cpu;
    let a = Positive::new("ls", &[1.0], DType::F64, &dev)?;
    let b = Positive::new("ls", &[2.0], DType::F64, &dev)?;
    let noise = Positive::new("noise", &[0.1], DType::F64, &dev)?;
    let (ac, bc) = (a.clone(), b.clone());
    let gp = ExactGp::new(&x, &y, vec![a, b], noise, move || {
        Ok(Kernel::gaussian(&ac.value()?).scale(&bc.value()?))
    })?;
    assert_mentions(&err_text(gp.to_safetensors(false)), &["'ls'", "two"]);
    Ok(())
}
