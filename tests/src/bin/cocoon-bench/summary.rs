//! The table `make bench` ends with: every figure of the run, Cocoon next
//! to its reference, and the ratio.

pub struct Summary {
    rows: Vec<[String; 5]>,
}

impl Summary {
    pub fn new() -> Self {
        Summary { rows: Vec::new() }
    }

    /// A figure with a reference: `cocoon` and `reference` in `unit`, their
    /// ratio (cocoon / reference) against `goal`.
    pub fn compare(&mut self, what: &str, cocoon: f64, reference: f64, unit: &str, goal: &str) {
        self.rows.push([
            what.to_string(),
            format!("{cocoon:.1} {unit}"),
            format!("{reference:.1} {unit}"),
            format!("{:.2}", cocoon / reference),
            goal.to_string(),
        ]);
    }

    /// A figure of Cocoon's alone.
    pub fn value(&mut self, what: &str, cocoon: String, goal: &str) {
        self.rows.push([
            what.to_string(),
            cocoon,
            "-".into(),
            "-".into(),
            goal.to_string(),
        ]);
    }

    pub fn print(&self) {
        let header = ["", "cocoon", "reference", "ratio", "goal"].map(String::from);
        let rows: Vec<&[String; 5]> = std::iter::once(&header).chain(&self.rows).collect();
        let widths: Vec<usize> = (0..5)
            .map(|column| {
                rows.iter()
                    .map(|row| row[column].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        println!();
        println!("summary (ratio = cocoon / reference):");
        for row in rows {
            let cells: Vec<String> = row
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(column, (cell, &width))| {
                    let pad = width - cell.chars().count();
                    if column == 0 {
                        format!("{cell}{}", " ".repeat(pad))
                    } else {
                        format!("{}{cell}", " ".repeat(pad))
                    }
                })
                .collect();
            println!("  {}", cells.join("  "));
        }
    }
}
