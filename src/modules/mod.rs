//! Kernel modules without modprobe: the module index (`modules.dep`,
//! `modules.alias`), the parallel loader, the `Drivers` front the boot uses, and
//! the `/sbin/modprobe` helper the kernel calls. It owns the device alias type the
//! device scanner hands over; it uses nothing of hninit above the base modules.

pub mod drivers;
pub mod index;
pub mod load;
pub mod modprobe;

/// A device's modalias and whether a driver is bound to it (the coldplug walk
/// only returns devices without one).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct DeviceAlias {
    pub modalias: String,
    pub devpath: String,
    pub bound: bool,
}
