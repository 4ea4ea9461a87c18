/// A batch of activation rows in host memory: `rows × width` f32, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Act {
    pub rows: usize,
    pub width: usize,
    pub data: Vec<f32>,
}

impl Act {
    pub fn zeros(rows: usize, width: usize) -> Self {
        Self {
            rows,
            width,
            data: vec![0.0; rows * width],
        }
    }

    pub fn from_vec(rows: usize, width: usize, data: Vec<f32>) -> Self {
        assert_eq!(data.len(), rows * width, "activation shape mismatch");
        Self { rows, width, data }
    }

    pub fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.width..(r + 1) * self.width]
    }

    pub fn row_mut(&mut self, r: usize) -> &mut [f32] {
        &mut self.data[r * self.width..(r + 1) * self.width]
    }
}
