/*
 * TensorRT IPluginV3 plugins LnDeployNorm and LnDeploySkipNorm (names, version and fields from
 * lnDeployPluginSpec.h, generated from ln_deploy/plugin_spec.py). One plugin class serves both:
 * the variant only changes the input list, the optional second output and the field table.
 * No device code here: the kernels are in libln_kernels.so (plugins/normKernels/).
 */
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "NvInferRuntime.h"

#include "lnDeployPluginSpec.h"
#include "lnKernels.h"

namespace ln_deploy
{
namespace plugin
{

using int32 = int32_t;
using float32 = float;

// Every field of either plugin (LnDeploySkipNorm's fields are a superset of LnDeployNorm's),
// with the defaults of plugin_spec.py.
struct NormFields
{
#define LN_DEPLOY_FIELD_MEMBER(name, type, def) type name = def;
    LN_DEPLOY_SKIPNORM_FIELDS(LN_DEPLOY_FIELD_MEMBER)
#undef LN_DEPLOY_FIELD_MEMBER
};

// One row of a plugin's field table: drives getFieldNames, createPlugin and getFieldsToSerialize.
struct FieldDesc
{
    char const* name;
    nvinfer1::PluginFieldType type;
    size_t offset; // into NormFields
};

enum class Variant
{
    kNorm,     // inputs x, scale, bias?; output y
    kSkipNorm, // inputs x, residual, scale, bias?; outputs y, sum?
};

std::vector<FieldDesc> const& fieldTable(Variant v);
char const* pluginName(Variant v);

// setLoggerFinder's body: the first non-null finder is kept (thread-safe).
void setLoggerFinderOnce(nvinfer1::ILoggerFinder* finder);

// Reads fields from a collection onto defaults; throws std::invalid_argument with the reason.
NormFields parseFields(Variant v, nvinfer1::PluginFieldCollection const* fc);

class LnDeployNormPlugin : public nvinfer1::IPluginV3,
                           public nvinfer1::IPluginV3OneCore,
                           public nvinfer1::IPluginV3OneBuild,
                           public nvinfer1::IPluginV3OneRuntime
{
public:
    LnDeployNormPlugin(Variant variant, NormFields const& fields);
    LnDeployNormPlugin(LnDeployNormPlugin const& other);
    ~LnDeployNormPlugin() override = default;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    nvinfer1::IPluginV3* clone() noexcept override;

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

    // IPluginV3OneBuild
    int32_t getNbOutputs() const noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
        int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
        nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
        int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

    NormFields const& fields() const { return mFields; }

private:
    int32_t scaleIndex() const { return mVariant == Variant::kSkipNorm ? 2 : 1; }
    // Checks the input count and the normalized shape; throws std::invalid_argument.
    void checkInputs(nvinfer1::Dims const* dims, int32_t nbInputs) const;

    // serialized fields
    Variant mVariant;
    NormFields mFields;
    // shape-dependent state, set by onShapeChange
    int32_t mNbInputs{0};
    int64_t mRows{0};
    int64_t mHidden{0};
    // storage behind getFieldsToSerialize()
    std::vector<nvinfer1::PluginField> mDataToSerialize;
    nvinfer1::PluginFieldCollection mFCToSerialize{};
};

class LnDeployNormPluginCreatorBase : public nvinfer1::IPluginCreatorV3One
{
public:
    explicit LnDeployNormPluginCreatorBase(Variant variant);

    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

private:
    Variant mVariant;
    std::vector<nvinfer1::PluginField> mFieldNames;
    nvinfer1::PluginFieldCollection mFC{};
};

// Two concrete types so the opt-in REGISTER_TENSORRT_PLUGIN can register each.
class LnDeployNormPluginCreator : public LnDeployNormPluginCreatorBase
{
public:
    LnDeployNormPluginCreator()
        : LnDeployNormPluginCreatorBase(Variant::kNorm)
    {
    }
};

class LnDeploySkipNormPluginCreator : public LnDeployNormPluginCreatorBase
{
public:
    LnDeploySkipNormPluginCreator()
        : LnDeployNormPluginCreatorBase(Variant::kSkipNorm)
    {
    }
};

} // namespace plugin
} // namespace ln_deploy
