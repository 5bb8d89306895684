use candle_core::{DType, Device, Tensor, Var};
use lazy_kernels::{Axis, LazyTensor};
fn main() -> candle_core::Result<()> {
    let x0 = Tensor::rand(0f32, 1., (50, 3), &Device::Cpu)?.to_dtype(DType::F16)?;
    let y0 = Tensor::rand(0f32, 1., (40, 3), &Device::Cpu)?.to_dtype(DType::F16)?;
    for which in 0..2 {
        for dt in [DType::F16, DType::BF16, DType::F32] {
            let x = Var::from_tensor(&x0.to_dtype(dt)?)?;
            let y = y0.to_dtype(dt)?;
            let s = Var::from_tensor(&Tensor::new(&[0.5f32], &Device::Cpu)?.to_dtype(dt)?)?;
            let xi = LazyTensor::vi(&x)?;
            let yj = LazyTensor::vj(&y)?;
            let sp = LazyTensor::param(&s)?;
            let k = (-xi.sqdist(&yj)? / sp.square()).exp();
            let l = if which == 0 {
                k.sum(Axis::J)?.to_dtype(DType::F32)?.sum_all()?
            } else {
                k.kmin(2, Axis::J)?.to_dtype(DType::F32)?.sum_all()?
            };
            let g = l.backward()?;
            println!(
                "{which} {dt:?}: gx {:?} gs {:?}",
                g.get(&x)
                    .unwrap()
                    .to_dtype(DType::F32)?
                    .abs()?
                    .sum_all()?
                    .to_scalar::<f32>()?,
                g.get(&s).unwrap().to_dtype(DType::F32)?.to_vec1::<f32>()?
            );
        }
    }
    Ok(())
}
